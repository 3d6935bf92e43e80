#!/usr/bin/env bash
# THE test command: installs what is missing, builds with warnings fatal, runs
# the whole ctest suite (TLS on), then builds and runs it again under
# ASan+UBSan (TLS off, so both builds are tested), then builds with clang and
# runs the fuzzers (MRB_FUZZ_SECONDS each), clang-tidy and the unit tests.
# Exits non-zero if anything fails. Works from any cwd.
#
# Env knobs (all optional):
#   MRB_SKIP_INSTALL=1   never call apt-get/npm (fail later if a tool is missing)
#   MRB_SKIP_ASAN=1      skip the sanitizer build and run
#   MRB_SKIP_TSAN=1      skip the ThreadSanitizer build and its five tests
#   MRB_SKIP_BOARDS=1    skip the cross builds (rpi-arm64, rpi-armhf) under qemu
#   MRB_CHECK_SERVICE=1  also boot the amd64 package's service under systemd in
#                        a Debian 12 container (boards/verify-service.sh; not
#                        by default: 2.5 minutes and a root file system
#                        download on a fresh machine, which CI cannot afford)
#   MRB_SKIP_FUZZ=1      skip the clang build (fuzzers, clang-tidy)
#   MRB_FUZZ_SECONDS=N   seconds per fuzzer (default 10)
#   CTEST_ARGS="..."     extra arguments for both ctest runs (e.g. "-R unit")
#   MRB_TEST_JOBS=N      tests run in parallel (default 2)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD_DIR=build
ASAN_DIR=build-asan
TSAN_DIR=build-tsan
FUZZ_DIR=build-fuzz
TOOLS_DIR="$ROOT/build/_tools"        # npm tools (dockerfilelint, aedes) and a python3 shim
NPM_TOOLS="$ROOT/tests/tools"         # their package.json and package-lock.json

section() { printf '\n==== %s ====\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/apt.sh
source "$ROOT/scripts/apt.sh"

# ---------------------------------------------------------------------------
section "Dependencies"
BUILD_PKGS=(build-essential cmake pkg-config libpaho-mqtt-dev libhiredis-dev libcjson-dev
  libmosquitto-dev)
TEST_PKGS=(libcmocka-dev mosquitto mosquitto-clients redis-server redis-tools
           python3 python3-paho-mqtt python3-redis valgrind docker-compose
           groff-base) # groff-base: groff, for the man page check (lint_man_pages)
# TLS (libssl-dev: OpenSSL headers for src/tls.c), its tests (openssl makes
# the certificates, stunnel4 carries Redis over TLS), fuzzers and lint
SECURITY_PKGS=(libssl-dev openssl stunnel4 clang libclang-rt-14-dev cppcheck
               clang-tidy binutils)
apt_install "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${SECURITY_PKGS[@]}"
command -v npm >/dev/null 2>&1 || apt_install nodejs npm

# npm tools go into the build area: dockerfilelint (tests/lint/check-docker.sh
# looks there) and aedes, a broker without MQTT 5 for the protocol fallback
# test (tests/integration/harness.py looks there). tests/tools/package-lock.json
# pins them and every dependency (npm_ci_into, scripts/apt.sh). The Node peer
# of the benchmark (bench/peer-node) likewise, for the bench_quick test, which
# skips that peer (and says so) where it is missing: with MRB_SKIP_INSTALL=1
# it is not installed and not required.
npm_ci_into "$NPM_TOOLS" "$TOOLS_DIR" node_modules/.bin/dockerfilelint \
  node_modules/aedes/package.json
if [[ ${MRB_SKIP_INSTALL:-0} != 1 ]]; then
  npm_ci_into "$ROOT/bench/peer-node" "$ROOT/$BUILD_DIR/_peer-node" \
    node_modules/mqtt/package.json node_modules/ioredis/package.json
fi
export PATH="$TOOLS_DIR/node_modules/.bin:$PATH"

# The integration tests use Debian's python3-paho-mqtt and python3-redis. A
# python3 from pyenv/conda/venv earlier on PATH does not see them, so put the
# system interpreter first on PATH when the default one cannot import them.
if ! python3 -c 'import paho.mqtt.client, redis' >/dev/null 2>&1; then
  /usr/bin/python3 -c 'import paho.mqtt.client, redis' >/dev/null 2>&1 \
    || die "/usr/bin/python3 cannot import paho.mqtt and redis"
  mkdir -p "$TOOLS_DIR/bin"
  pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  ln -sf /usr/bin/python3 "$TOOLS_DIR/bin/python3"
  ln -sf "/usr/bin/python$pyver" "$TOOLS_DIR/bin/python$pyver"
  export PATH="$TOOLS_DIR/bin:$PATH"
  export PYENV_VERSION=system
  echo "python3: using /usr/bin/python3 (the default python3 lacks paho-mqtt/redis)"
fi

for tool in cmake ctest docker-compose dockerfilelint mosquitto redis-server python3 \
            openssl stunnel4 clang cppcheck run-clang-tidy groff; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found after install"
done
echo "cmake:          $(cmake --version | head -n1)"
echo "cc:             $(cc --version | head -n1)"
echo "python3:        $(command -v python3)"
echo "dockerfilelint: $(command -v dockerfilelint)"

# ---------------------------------------------------------------------------
PASSED=0
SKIPPED=0
FAILED=0
FAILED_SUITES=()
SKIPPED_TESTS=()   # "suite: test (Skipped): reason", listed in the summary

# The reason a skipped test gave: its lines that say "skip" (the test's
# output, which ctest keeps in LastTest.log and does not print for a skip).
skip_reason() {   # skip_reason BUILD_DIR TEST
  local log="$1/Testing/Temporary/LastTest.log"
  [[ -f $log ]] || return 0
  awk -v t="$2" '
    $0 ~ "^[0-9]+/[0-9]+ Test: " t "$" { found = 1; next }
    found && /^Output:$/ { inside = 1; next }
    inside && /^<end of output>/ { exit }
    inside && tolower($0) ~ /skip/ { sub(/^[ \t]+/, ""); print; exit }' "$log"
}

run_suite() {   # run_suite NAME BUILD_DIR [CTEST ARGUMENTS...]
  local name=$1 dir=$2 log rc=0 line total nfail nskip ndis t why
  shift 2
  log="$dir/ctest-summary.log"
  # shellcheck disable=SC2086  # CTEST_ARGS is a word list on purpose
  # -j: the tests use private servers on free ports and temp dirs, and most
  # of their time is waiting (reconnects, the fault matrix's 10 s stalls)
  ctest --test-dir "$dir" --output-on-failure --no-tests=error --timeout 600 \
    -j "${MRB_TEST_JOBS:-2}" \
    "$@" ${CTEST_ARGS:-} 2>&1 | tee "$log" || rc=$?
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n1 || true)
  if [[ -n $line ]]; then
    nfail=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")
    # ctest counts a skipped test (SKIP_RETURN_CODE) among the passed ones
    # and leaves a disabled one out of the total; it lists both under "The
    # following tests did not run:", as "  N - NAME (Skipped|Disabled)"
    local notrun=()
    mapfile -t notrun < <(sed -n '/^The following tests did not run:/,/^$/p' "$log" |
                          sed -nE 's/^[[:space:]]*[0-9]+ - (.*) \((Skipped|Disabled)\)$/\1 (\2)/p')
    nskip=0 ndis=0
    for t in "${notrun[@]}"; do
      case $t in
        *"(Skipped)") nskip=$(( nskip + 1 )) ;;
        *) ndis=$(( ndis + 1 )) ;;
      esac
      why=$(skip_reason "$dir" "${t% (*}")
      SKIPPED_TESTS+=("$name: $t${why:+: $why}")
    done
    PASSED=$(( PASSED + total - nfail - nskip ))
    SKIPPED=$(( SKIPPED + nskip + ndis ))
    FAILED=$(( FAILED + nfail ))
    if (( nskip + ndis )); then
      echo "test.sh: $name: $(( nskip + ndis )) test(s) did not run (not counted as passed): ${notrun[*]}"
    fi
  fi
  if (( rc != 0 )); then
    FAILED_SUITES+=("$name (ctest exit $rc)")
  fi
}

section "Configure + build ($BUILD_DIR, RelWithDebInfo, -Werror)"
[[ -f CMakeLists.txt ]] || die "no CMakeLists.txt in $ROOT"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMRB_WERROR=ON -DMRB_SANITIZE=OFF -DMRB_TESTS=ON -DWITH_TLS=ON
cmake --build "$BUILD_DIR" -j2

section "Tests ($BUILD_DIR)"
run_suite "normal" "$BUILD_DIR"

if [[ ${MRB_SKIP_ASAN:-0} != 1 ]]; then
  section "Configure + build ($ASAN_DIR, Debug, ASan+UBSan, -Werror, TLS off)"
  # without TLS: the normal build tests mqtts://, this one "built without
  # TLS" (and valgrind_security runs the TLS code under memcheck)
  cmake -S . -B "$ASAN_DIR" -DCMAKE_BUILD_TYPE=Debug \
    -DMRB_WERROR=ON -DMRB_SANITIZE=ON -DMRB_TESTS=ON -DWITH_TLS=OFF
  cmake --build "$ASAN_DIR" -j2

  section "Tests ($ASAN_DIR, ASan+UBSan)"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  # Paho's own loss after its write-failure defect (see the file)
  export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$ROOT/tests/lsan-paho.supp:print_suppressions=0}"
  export MRB_TIMEOUT_SCALE="${MRB_TIMEOUT_SCALE:-3}"   # integration tests: slower binary
  run_suite "asan+ubsan" "$ASAN_DIR"
else
  section "ASan+UBSan skipped (MRB_SKIP_ASAN=1)"
fi

if [[ ${MRB_SKIP_TSAN:-0} != 1 ]]; then
  # the threads (main, ingest, Paho's two) and the lock order of
  # docs/DESIGN.md, checked where they meet: forwarding, streams, reload,
  # shutdown and restart with the bridge built with -fsanitize=thread; a
  # report fails the test (harness: sanitizer_report)
  section "Configure + build ($TSAN_DIR, Debug, ThreadSanitizer, -Werror, TLS off)"
  cmake -S . -B "$TSAN_DIR" -DCMAKE_BUILD_TYPE=Debug -DMRB_WERROR=ON \
    -DMRB_SANITIZE=OFF -DMRB_HARDEN=OFF -DMRB_TESTS=ON -DWITH_TLS=OFF \
    -DCMAKE_C_FLAGS="-fsanitize=thread -O1 -g" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread"
  cmake --build "$TSAN_DIR" -j2 --target mqtt-redis-bridge

  section "Tests ($TSAN_DIR, ThreadSanitizer)"
  TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0}" MRB_TIMEOUT_SCALE="${MRB_TIMEOUT_SCALE:-3}" \
    run_suite "tsan" "$TSAN_DIR" -R '^integration_(forwarding|streams|reload|shutdown|restart)$'
else
  section "ThreadSanitizer skipped (MRB_SKIP_TSAN=1)"
fi

if [[ ${MRB_SKIP_FUZZ:-0} != 1 ]]; then
  section "Configure + build ($FUZZ_DIR, clang, libFuzzer + ASan + UBSan, -Werror)"
  CC=clang cmake -S . -B "$FUZZ_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DMRB_WERROR=ON -DMRB_SANITIZE=ON -DMRB_FUZZ=ON -DMRB_TESTS=ON -DWITH_TLS=ON \
    -DMRB_FUZZ_SECONDS="${MRB_FUZZ_SECONDS:-10}"
  cmake --build "$FUZZ_DIR" -j2

  section "Fuzzers, clang-tidy, unit tests ($FUZZ_DIR)"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  run_suite "fuzz+lint (clang)" "$FUZZ_DIR" -L 'fuzz|lint|unit' -j2
  if compgen -G "$FUZZ_DIR/tests/fuzz/crash-*" >/dev/null; then
    echo "fuzz: crash inputs kept in $FUZZ_DIR/tests/fuzz/ (copy them into tests/fuzz/regressions/<target>/ once fixed)"
  fi
else
  section "Fuzzers and clang-tidy skipped (MRB_SKIP_FUZZ=1)"
fi

# ---------------------------------------------------------------------------
# Boards: cross-build rpi-arm64 and rpi-armhf, run the unit tests and the qemu
# subset of the integration tests under qemu-user, build and check the Debian
# packages (boards/build.sh; boards/README.md). The package check counts as
# one test per board.
if [[ ${MRB_SKIP_BOARDS:-0} != 1 ]]; then
  for board in rpi-arm64 rpi-armhf; do
    section "Board $board (cross build, package, qemu tests)"
    if bash "$ROOT/boards/build.sh" "$board" --package; then
      PASSED=$(( PASSED + 1 ))
    else
      FAILED=$(( FAILED + 1 ))
      FAILED_SUITES+=("$board (build or package check)")
      continue
    fi
    CTEST_ARGS="-L ^(unit|qemu)\$ ${CTEST_ARGS:-}" \
      run_suite "$board (qemu)" "$ROOT/build/boards/$board"
  done
  # the minimal preset (pub/sub only; docs/FOOTPRINT.md): it builds with
  # warnings fatal, checks a pub/sub configuration and refuses a stream
  # route with exit 2. One test.
  section "Board x86_64 --minimal (pub/sub only)"
  min="$ROOT/build/boards/x86_64-minimal/mqtt-redis-bridge"
  if bash "$ROOT/boards/build.sh" x86_64 --minimal &&
     "$min" --check --route 'a/+ > a:*' >/dev/null &&
     { "$min" --check --route 'a/+ < a:* stream' 2>&1; test $? -eq 2; } |
       grep -q 'mode "stream" is not in this build'; then
    PASSED=$(( PASSED + 1 ))
  else
    FAILED=$(( FAILED + 1 ))
    FAILED_SUITES+=("x86_64 --minimal (build or its checks)")
  fi
else
  section "Boards skipped (MRB_SKIP_BOARDS=1)"
fi

# ---------------------------------------------------------------------------
# Service: the amd64 package installed in a Debian 12 container booted with
# systemd-nspawn; the service must run, be ready, pass a message each way,
# stop cleanly, start at boot and purge (boards/verify-service.sh; needs root
# and the Debian mirror). The root file system is cached in build/boards/
# (the first run downloads it: about 2 more minutes; then 40 to 60 s).
# Opt-in (MRB_CHECK_SERVICE=1): CI runs on a fresh machine every time.
if [[ ${MRB_CHECK_SERVICE:-0} == 1 ]]; then
  section "Service under systemd (amd64 package, Debian 12 container)"
  if bash "$ROOT/boards/verify-service.sh" --cache "$ROOT/build/boards/rootfs-cache"; then
    PASSED=$(( PASSED + 1 ))
  else
    FAILED=$(( FAILED + 1 ))
    FAILED_SUITES+=("service under systemd (boards/verify-service.sh)")
  fi
else
  section "Service under systemd not checked (MRB_CHECK_SERVICE=1 checks it)"
fi

# ---------------------------------------------------------------------------
section "Summary"
if (( ${#SKIPPED_TESTS[@]} )); then
  # a skip is not a pass: said here, where CI shows it, with its reason
  printf 'SKIPPED test: %s\n' "${SKIPPED_TESTS[@]}"
fi
if (( ${#FAILED_SUITES[@]} )); then
  printf 'FAILED suite: %s\n' "${FAILED_SUITES[@]}"
  echo "total: $PASSED passed, $SKIPPED skipped, $FAILED failed"
  exit 1
fi
if (( SKIPPED )); then
  echo "all suites passed, but $SKIPPED test(s) did not run (listed above)"
else
  echo "all suites passed"
fi
echo "total: $PASSED passed, $SKIPPED skipped, $FAILED failed"
