#!/usr/bin/env bash
# Reproduce the fault matrix (docs/FAULTS.md) with one command: installs what
# is missing, builds the bridge (build/, RelWithDebInfo), and runs every cell
# of tests/faults/fault_matrix.py against private redis-server and mosquitto
# instances on free loopback ports. Prints the table; the JSON lines go to
# build/faults.jsonl. Takes about 6.5 minutes on 2 cores.
#
#   scripts/faults.sh [fault_matrix.py options, e.g. --fault redis_kill]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { printf 'faults.sh: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/apt.sh
source "$ROOT/scripts/apt.sh"
apt_install build-essential cmake pkg-config libpaho-mqtt-dev libhiredis-dev libmosquitto-dev \
  libcjson-dev mosquitto redis-server python3 python3-paho-mqtt python3-redis

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target mqtt-redis-bridge
rm -f build/faults.jsonl
echo "fault matrix, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)"
exec /usr/bin/python3 tests/faults/fault_matrix.py --bridge build/mqtt-redis-bridge \
  --json build/faults.jsonl "$@"
