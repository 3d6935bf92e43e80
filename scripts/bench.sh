#!/usr/bin/env bash
# The benchmark in one command (docs/PERFORMANCE.md): installs what is
# missing, builds the bridge and the load generator (RelWithDebInfo, in
# build-bench/), then runs bench/run.py against fresh redis-server and
# mosquitto processes on free loopback ports.
#
#   scripts/bench.sh           full run (~4 min): writes the table into
#                              docs/PERFORMANCE.md and docs/perf-results.json
#   scripts/bench.sh --quick   ~40 s, prints only (build-bench/quick.json)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { printf 'bench.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/apt.sh
source "$ROOT/scripts/apt.sh"
apt_install build-essential cmake pkg-config libpaho-mqtt-dev libhiredis-dev libmosquitto-dev \
  libcjson-dev mosquitto mosquitto-clients redis-server python3

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMRB_TESTS=OFF >/dev/null
cmake --build build-bench -j2 --target mqtt-redis-bridge mrb_bench

ARGS=(--bridge build-bench/mqtt-redis-bridge --gen build-bench/bench/mrb_bench)
if [[ " $* " == *" --quick "* ]]; then
  exec python3 bench/run.py "${ARGS[@]}" --json build-bench/quick.json "$@"
fi
exec python3 bench/run.py "${ARGS[@]}" --json docs/perf-results.json \
  --doc docs/PERFORMANCE.md "$@"
