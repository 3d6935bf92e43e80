#!/usr/bin/env bash
# The benchmark in one command (docs/PERFORMANCE.md): installs what is
# missing (Debian packages; the Node peer's npm packages, pinned by
# bench/peer-node/package-lock.json, with npm ci into build-bench/_peer-node),
# builds the bridge and the load generator (RelWithDebInfo, in build-bench/),
# then runs bench/run.py: the bridge, the direct paths and the two peers
# (bench/peer-node/peer.js, mosquitto's own bridge), each subject on fresh
# redis-server and mosquitto processes on free loopback ports.
#
#   scripts/bench.sh           full run (~6 min): writes the table into
#                              docs/PERFORMANCE.md and docs/perf-results.json
#   scripts/bench.sh --quick   ~50 s, prints only (build-bench/quick.json)
#   scripts/bench.sh --no-peers   without the peers
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { printf 'bench.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/apt.sh
source "$ROOT/scripts/apt.sh"
apt_install build-essential cmake pkg-config libpaho-mqtt-dev libhiredis-dev libmosquitto-dev \
  libcjson-dev mosquitto mosquitto-clients redis-server redis-tools python3 \
  python3-paho-mqtt python3-redis
npm_ci_into "$ROOT/bench/peer-node" "$ROOT/build-bench/_peer-node" \
  node_modules/mqtt/package.json node_modules/ioredis/package.json
# bench/run.py starts the servers through tests/integration/harness.py, which
# needs Debian's python3-paho-mqtt and python3-redis: a python3 of
# pyenv/conda/venv earlier on PATH does not see them
PY=python3
python3 -c 'import paho.mqtt.client, redis' >/dev/null 2>&1 || PY=/usr/bin/python3

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMRB_TESTS=OFF >/dev/null
cmake --build build-bench -j2 --target mqtt-redis-bridge mrb_bench

ARGS=(--bridge build-bench/mqtt-redis-bridge --gen build-bench/bench/mrb_bench
      --node-modules build-bench/_peer-node/node_modules)
if [[ " $* " == *" --quick "* ]]; then
  exec "$PY" bench/run.py "${ARGS[@]}" --json build-bench/quick.json "$@"
fi
exec "$PY" bench/run.py "${ARGS[@]}" --json docs/perf-results.json \
  --doc docs/PERFORMANCE.md "$@"
