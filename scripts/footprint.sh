#!/usr/bin/env bash
# scripts/footprint.sh [footprint.py options]
# Builds the board variants with boards/build.sh (x86_64 dynamic, TLS and
# static; rpi-arm64 and rpi-armhf dynamic and static) and runs
# scripts/footprint.py on them: memory, threads and wake-ups for the x86_64
# builds, stripped sizes for all. About 4 minutes on 2 cores. The table goes
# into docs/FOOTPRINT.md by hand, with the date and the machine.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B="$ROOT/build/boards"
build() { bash "$ROOT/boards/build.sh" "$@" >"$B.$(IFS=_; echo "$*").log" 2>&1 \
            || { tail -n 30 "$B.$(IFS=_; echo "$*").log" >&2; exit 1; }; }
mkdir -p "$B"
for v in "x86_64" "x86_64 --tls" "x86_64 --static" "rpi-arm64" "rpi-arm64 --static" \
         "rpi-armhf" "rpi-armhf --static"; do
  echo "building $v"
  # shellcheck disable=SC2086  # $v is a board and its options
  build $v
done
exec /usr/bin/python3 "$ROOT/scripts/footprint.py" "$@" \
  "x86_64=$B/x86_64/mqtt-redis-bridge" \
  "x86_64-tls=$B/x86_64-tls/mqtt-redis-bridge" \
  "x86_64-static=$B/x86_64-static/mqtt-redis-bridge" \
  "rpi-arm64=$B/rpi-arm64/mqtt-redis-bridge@qemu-aarch64" \
  "rpi-arm64-static=$B/rpi-arm64-static/mqtt-redis-bridge@qemu-aarch64" \
  "rpi-armhf=$B/rpi-armhf/mqtt-redis-bridge@qemu-arm" \
  "rpi-armhf-static=$B/rpi-armhf-static/mqtt-redis-bridge@qemu-arm"
