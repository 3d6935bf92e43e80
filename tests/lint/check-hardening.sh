#!/usr/bin/env bash
# Check the hardening of a built binary with readelf (ctest lint_hardening):
# a PIE, full RELRO (GNU_RELRO + BIND_NOW), the stack protector, and with
# FORTIFY=1 the _FORTIFY_SOURCE checked functions (optimised builds only).
# Usage: check-hardening.sh BINARY FORTIFY(0|1)
set -euo pipefail
bin=$1 fortify=${2:-1}
fail=0
check() { # check WHAT COMMAND...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then echo "ok:   $what"; else echo "FAIL: $what"; fail=1; fi
}
command -v readelf >/dev/null || { echo "check-hardening: readelf not found (binutils)"; exit 1; }
check "PIE (ELF type DYN)" grep -q 'Type:[[:space:]]*DYN' <(readelf -h "$bin")
check "RELRO (GNU_RELRO segment)" grep -q GNU_RELRO <(readelf -lW "$bin")
check "BIND_NOW (full RELRO)" grep -Eq 'BIND_NOW|FLAGS_1.*NOW' <(readelf -dW "$bin")
check "stack protector (__stack_chk_fail)" grep -q __stack_chk_fail <(readelf --dyn-syms -W "$bin")
if [[ $fortify == 1 ]]; then
  check "_FORTIFY_SOURCE (__*_chk functions)" grep -Eq '__[a-z]+_chk' <(readelf --dyn-syms -W "$bin")
fi
exit $fail
