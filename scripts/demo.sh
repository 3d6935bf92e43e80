#!/usr/bin/env bash
# THE demo command: installs what is missing, builds the bridge, uses the Redis
# on 127.0.0.1:6379 and the MQTT broker on 127.0.0.1:1883 if they are up (or
# starts private ones in a temp dir), then runs the bridge in the foreground
# with its default routes. Ctrl-C (or SIGTERM) stops it, and the servers this
# script started, and nothing else.
#
#   scripts/demo.sh [extra bridge options...]
#   DEMO_SECONDS=N scripts/demo.sh     # stop by itself after N seconds
# shellcheck disable=SC2317  # cleanup/on_signal and their helpers run from traps
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD_DIR=build
BIN="$ROOT/$BUILD_DIR/mqtt-redis-bridge"
REDIS_PORT=6379
MQTT_PORT=1883

say() { printf '[demo] %s\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }

if [[ -n ${DEMO_SECONDS:-} && ! ${DEMO_SECONDS} =~ ^[1-9][0-9]*$ ]]; then
  die "DEMO_SECONDS must be a positive integer, got '${DEMO_SECONDS}'"
fi

# shellcheck source=scripts/apt.sh
source "$ROOT/scripts/apt.sh"

listening() {   # listening PORT : true if something accepts on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() {       # alive PID : running and not a zombie (no fork)
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

wait_port() {   # wait_port PORT PID NAME LOG : up to 10 s
  local i
  for (( i = 0; i < 100; i++ )); do
    listening "$1" && return 0
    alive "$2" || { cat "$4" >&2 || true; die "$3 exited before listening on 127.0.0.1:$1"; }
    sleep 0.1
  done
  cat "$4" >&2 || true
  die "$3 did not listen on 127.0.0.1:$1 within 10 s"
}

stop_pid() {    # stop_pid PID NAME : TERM, up to 5 s, then KILL; reaps it
  local pid=$1 i
  [[ -n $pid ]] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      say "$2 (pid $pid) ignored SIGTERM, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
apt_install build-essential cmake pkg-config libpaho-mqtt-dev libhiredis-dev libmosquitto-dev \
  libcjson-dev mosquitto mosquitto-clients redis-server redis-tools

say "building $BIN"
if [[ -f $BUILD_DIR/CMakeCache.txt ]]; then
  cmake -S . -B "$BUILD_DIR" >/dev/null          # keep the existing settings
else
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMRB_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD_DIR" --target mqtt-redis-bridge -j2
[[ -x $BIN ]] || die "build did not produce $BIN"

TMP_DIR=
REDIS_PID=
MQTT_PID=
BRIDGE_PID=
STOPPING=0

cleanup() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM    # cleanup is bounded (<= ~5 s per process): let it finish
  set +e
  stop_pid "$BRIDGE_PID" bridge
  if [[ -n $MQTT_PID ]]; then say "stopping mosquitto (pid $MQTT_PID)"; stop_pid "$MQTT_PID" mosquitto; fi
  if [[ -n $REDIS_PID ]]; then say "stopping redis-server (pid $REDIS_PID)"; stop_pid "$REDIS_PID" redis-server; fi
  [[ -n $TMP_DIR ]] && rm -rf -- "$TMP_DIR"
  exit "$rc"
}
on_signal() {   # first signal: ask the bridge to stop; second: kill it
  [[ -n $BRIDGE_PID ]] || exit "$1"     # bridge not started yet (or done)
  alive "$BRIDGE_PID" || return 0       # it is exiting: the main loop reaps it
  if (( STOPPING )); then kill -KILL "$BRIDGE_PID" 2>/dev/null || true
  else STOPPING=1; kill -TERM "$BRIDGE_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mrb-demo.XXXXXX")
chmod 755 "$TMP_DIR"    # mosquitto drops root privileges to user 'mosquitto'

if listening "$REDIS_PORT"; then
  say "using the Redis already listening on 127.0.0.1:$REDIS_PORT"
else
  say "starting redis-server on 127.0.0.1:$REDIS_PORT (no persistence, dir $TMP_DIR)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$TMP_DIR" --daemonize no >"$TMP_DIR/redis.log" 2>&1 &
  REDIS_PID=$!
  wait_port "$REDIS_PORT" "$REDIS_PID" redis-server "$TMP_DIR/redis.log"
fi

if listening "$MQTT_PORT"; then
  say "using the MQTT broker already listening on 127.0.0.1:$MQTT_PORT"
else
  say "starting mosquitto on 127.0.0.1:$MQTT_PORT"
  cat >"$TMP_DIR/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
log_dest stderr
CONF
  mosquitto -c "$TMP_DIR/mosquitto.conf" >"$TMP_DIR/mosquitto.log" 2>&1 &
  MQTT_PID=$!
  wait_port "$MQTT_PORT" "$MQTT_PID" mosquitto "$TMP_DIR/mosquitto.log"
fi

cat <<'TRY'

---------------------------------------------------------------- try it ----
 Redis -> MQTT  (route user/+ <> user:*)
   terminal 2:  mosquitto_sub -h 127.0.0.1 -t 'user/alice' -v
   terminal 3:  redis-cli -h 127.0.0.1 PUBLISH user:alice '{"type":"info","message":"Hello Alice!"}'
 MQTT -> Redis  (route news <> news)
   terminal 2:  redis-cli SUBSCRIBE news
   terminal 3:  mosquitto_pub -t news -m 'Breaking'
 Stop with Ctrl-C.
----------------------------------------------------------------------------

TRY

if [[ -n ${DEMO_SECONDS:-} ]]; then
  say "running the bridge for ${DEMO_SECONDS}s (DEMO_SECONDS)"
  # timeout sends SIGTERM after N s (SIGKILL 10 s later) and forwards our TERM.
  timeout -k 10 "$DEMO_SECONDS" "$BIN" "$@" &
else
  say "running the bridge (Ctrl-C to stop)"
  "$BIN" "$@" &
fi
BRIDGE_PID=$!

# Poll instead of a plain `wait`: bash 5.2 can lose the exit status of a child
# that exits while a trapped signal interrupts `wait` (it reports -1). The loop
# lasts as long as the bridge: Ctrl-C/SIGTERM (on_signal) or DEMO_SECONDS
# (timeout) stop it.
while alive "$BRIDGE_PID"; do sleep 0.2 || true; done
rc=0; wait "$BRIDGE_PID" || rc=$?
BRIDGE_PID=
if [[ -n ${DEMO_SECONDS:-} ]] && (( rc == 124 )); then rc=0; fi   # timed out = done
say "bridge exited with status $rc"
exit "$rc"
