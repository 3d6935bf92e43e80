#!/usr/bin/env bash
# cppcheck over src/ and tests/fuzz/ (ctest lint_cppcheck). Classes warning,
# performance and portability; style is left out (variable scope, const
# parameters of library callback signatures: taste, not defects). Inline
# suppressions (// cppcheck-suppress ID) must say why.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
command -v cppcheck >/dev/null || { echo "cppcheck not found (scripts/test.sh installs it)"; exit 1; }
exec cppcheck --quiet --error-exitcode=1 --inline-suppr --std=c11 \
  --enable=warning,performance,portability \
  -I "$root/include" -I "$root/src" -D_POSIX_C_SOURCE=200809L \
  -DMRB_WITH_TLS=1 '-DMRB_VERSION="0"' \
  "$root/src" "$root/tests/fuzz"
