#!/usr/bin/env bash
# boards/verify-service.sh [--deb FILE] [--cache DIR] [--keep]
#
# Checks that the amd64 package's service really runs under systemd. Makes a
# minimal Debian 12 (bookworm) root file system with debootstrap (systemd,
# redis-server, mosquitto and the package's dependencies), boots it with
# systemd-nspawn (private network: loopback only), installs the package the
# way a user does (apt-get install ./mqtt-redis-bridge_*_amd64.deb) and checks:
#   1. the package's postinst enabled and started it: active (running)
#   2. the bridge logged "ready:" in the journal (both brokers connected,
#      with the board's default config: 127.0.0.1:1883 and 127.0.0.1:6379)
#   3. the sandbox is in force: a dynamic user (not root), no capabilities,
#      no_new_privs, a seccomp filter, / read-only
#   4. a message crosses each way: redis-cli PUBLISH user:alice reaches
#      mosquitto_sub -t user/alice; mosquitto_pub -t user/bob reaches
#      redis-cli SUBSCRIBE user:bob
#   5. systemctl stop: exit status 0, "shutdown complete", in under 10 s
#   6. after a reboot of the container it runs again (enabled at boot), ready
#   7. apt-get purge stops it and removes unit and configuration
# Prints PASS (exit 0) or FAIL (exit 1); exit 2 when it cannot run here.
# Needs root (re-runs itself with sudo), debootstrap and systemd-nspawn
# (installed when missing) and the Debian mirror. Bounded: the whole run is
# stopped after MRB_VERIFY_TIMEOUT seconds (default 900). It cleans up what it
# made: the container is powered off (SIGTERM to its systemd-nspawn, by PID;
# SIGKILL after 30 s), the temp dir is removed; on a host without systemd,
# so are the cgroup made for the container and /run/systemd/nspawn.
#   --deb FILE   package to test (default: boards/build.sh x86_64 --package
#                builds it from this tree, then build/boards/x86_64/
#                mqtt-redis-bridge_*_amd64.deb is tested)
#   --cache DIR  keep the debootstrapped root file system as a tar in DIR and
#                reuse it next time (skips the download)
#   --keep       leave the temp dir (root file system, logs) for inspection
# Env: MRB_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# MRB_VERIFY_TIMEOUT, MRB_SKIP_INSTALL=1 (never calls apt-get on the host).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { printf 'verify-service.sh: error: %s\n' "$*" >&2; exit 2; }
say() { printf '\n== %s ==\n' "$*"; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

DEB='' CACHE='' KEEP=0
while (( $# )); do
  case $1 in
    --deb) DEB=$(realpath "${2:?--deb FILE}"); shift ;;
    --cache) CACHE=$(realpath -m "${2:?--cache DIR}"); shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

if [[ -z $DEB ]]; then   # as the calling user (build.sh uses sudo for apt itself)
  say "build: boards/build.sh x86_64 --package"
  bash "$ROOT/boards/build.sh" x86_64 --package || die "boards/build.sh x86_64 --package failed"
  debs=("${MRB_BOARDS_DIR:-$ROOT/build/boards}"/x86_64/mqtt-redis-bridge_*_amd64.deb)
  DEB=${debs[-1]}
fi
if (( EUID != 0 )); then
  command -v sudo >/dev/null 2>&1 || die "needs root (debootstrap, systemd-nspawn) and sudo is missing"
  args=(--deb "$DEB"); [[ -n $CACHE ]] && args+=(--cache "$CACHE")
  (( KEEP )) && args+=(--keep)
  exec sudo MRB_DEBIAN_MIRROR="${MRB_DEBIAN_MIRROR:-}" MRB_VERIFY_TIMEOUT="${MRB_VERIFY_TIMEOUT:-}" \
    MRB_SKIP_INSTALL="${MRB_SKIP_INSTALL:-}" "$0" "${args[@]}"
fi
[[ $(dpkg --print-architecture 2>/dev/null) == amd64 ]] || die "an amd64 Debian/Ubuntu host is needed (the container runs the amd64 package)"

MIRROR=${MRB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
LIMIT=${MRB_VERIFY_TIMEOUT:-900}
START=$(date +%s)

# shellcheck source=scripts/apt.sh
source "$ROOT/scripts/apt.sh"

# ------------------------------------------------------------- state, cleanup
WORK='' TPID='' NSPAWN='' LEADER='' WATCHDOG='' MACHINE="mrb-verify-$$"
CG_NEW=()            # the container's own cgroups (host without systemd)
RUN_NSPAWN_NEW=0     # /run/systemd/nspawn did not exist before
HOST_SYSTEMD=0; [[ -d /run/systemd/system ]] && HOST_SYSTEMD=1

# The cgroup directories of this process (cgroup2 and the v1 name=systemd
# hierarchy). Without systemd on the host, systemd-nspawn --keep-unit makes
# "payload" and "supervisor" in its own cgroup and leaves them there; two
# runs at once would share them. So it runs in a cgroup of its own, made
# here (below this process's) and removed at the end.
own_cgroup_dirs() {
  local line path mnt
  while IFS= read -r line; do
    path=${line#*:*:}
    case $line in
      0::*) mnt=$(findmnt -rn -t cgroup2 -o TARGET | head -1) ;;
      *:name=systemd:*) mnt=$(findmnt -rn -t cgroup -o TARGET,OPTIONS | awk '/name=systemd/{print $1; exit}') ;;
      *) continue ;;
    esac
    [[ -n $mnt ]] && printf '%s\n' "${mnt}${path%/}"
  done </proc/self/cgroup
}

halt_container() {   # orderly poweroff via SIGTERM to systemd-nspawn; SIGKILL after 30 s
  [[ -n $TPID ]] || return 0
  if [[ -n $NSPAWN ]] && kill -0 "$NSPAWN" 2>/dev/null; then
    kill -TERM "$NSPAWN" 2>/dev/null || true
    local i
    for (( i = 0; i < 300; i++ )); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$NSPAWN" 2>/dev/null; then
      echo "container did not power off in 30 s: SIGKILL to systemd-nspawn $NSPAWN"
      kill -KILL "$NSPAWN" 2>/dev/null || true
    fi
  elif kill -0 "$TPID" 2>/dev/null; then
    kill -TERM "$TPID" 2>/dev/null || true
  fi
  wait "$TPID" 2>/dev/null || true
  TPID='' NSPAWN='' LEADER=''
}

exec 3>&1 4>&2   # the script's own output, for the traps (a signal may come
                 # while a function's output goes to a log)
cleanup() {
  local rc=$?
  set +e
  exec 1>&3 2>&4
  trap - EXIT INT TERM
  if [[ -n $WATCHDOG ]]; then kill -TERM "$WATCHDOG" 2>/dev/null; wait "$WATCHDOG" 2>/dev/null; fi
  halt_container
  local d
  for d in "${CG_NEW[@]}"; do   # deepest first; rmdir fails (and keeps it) if processes remain
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    [[ -d $d ]] && echo "warning: could not remove cgroup $d"
  done
  rm -rf --one-file-system "/run/systemd/nspawn/propagate/$MACHINE" 2>/dev/null || true
  (( RUN_NSPAWN_NEW )) && [[ -d /run/systemd/nspawn ]] && \
    find /run/systemd/nspawn -depth -type d -empty -delete 2>/dev/null
  if [[ -n $WORK && -d $WORK ]]; then
    if grep -qF " $WORK" /proc/self/mountinfo; then
      echo "warning: something is still mounted under $WORK; left it there"
    elif (( KEEP )); then
      echo "kept: $WORK (rootfs/, logs)"
    else
      rm -rf --one-file-system "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "verify-service.sh: interrupted" >&4; exit 2' INT TERM
# Watchdog: TERM to this script after LIMIT s (bash acts on it once the
# running step ends; every step has its own time limit too).
( trap 'kill -TERM $sp 2>/dev/null; exit 0' TERM
  sleep "$LIMIT" & sp=$!; wait $sp
  echo "verify-service.sh: time limit of $LIMIT s reached" >&4; kill -TERM $$ ) &
WATCHDOG=$!

# ------------------------------------------------------------------- package
say "package"
WORK=$(mktemp -d /var/tmp/mrb-verify.XXXXXX)
[[ -f $DEB ]] || die "no package $DEB"
[[ $(dpkg-deb -f "$DEB" Architecture) == amd64 ]] || die "$DEB is not an amd64 package"
echo "$DEB ($(dpkg-deb -f "$DEB" Version))"
# The package's dependencies go into the root file system up front: the
# container has no network, as on a board apt would fetch them.
mapfile -t DEPS < <(dpkg-deb -f "$DEB" Depends | tr ',' '\n' |
  sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/[[:space:]]//g' | grep -v '^$' | sort -u)
INCLUDE=(systemd systemd-sysv dbus procps redis-server redis-tools mosquitto mosquitto-clients "${DEPS[@]}")
echo "root file system packages: ${INCLUDE[*]}"

# -------------------------------------------------------------------- rootfs
say "Debian 12 root file system"
apt_install debootstrap systemd-container
ROOTFS=$WORK/rootfs
KEY=$(printf '%s\n' "$MIRROR" "${INCLUDE[@]}" | sha1sum | cut -c1-10)
TAR=${CACHE:+$CACHE/bookworm-amd64-$KEY.tar}
t0=$(date +%s)
if [[ -n $TAR && -f $TAR ]]; then
  mkdir "$ROOTFS"
  tar -C "$ROOTFS" --numeric-owner -xpf "$TAR"
  echo "from the cache: $TAR ($(( $(date +%s) - t0 )) s)"
else
  inc=$(IFS=,; echo "${INCLUDE[*]}")
  if ! timeout $(( LIMIT - ($(date +%s) - START) )) debootstrap --variant=minbase --include="$inc" bookworm "$ROOTFS" "$MIRROR" \
      >"$WORK/debootstrap.log" 2>&1; then
    tail -20 "$WORK/debootstrap.log"
    die "debootstrap failed (log above; mirror $MIRROR)"
  fi
  echo "debootstrap: $(( $(date +%s) - t0 )) s, $(du -sh "$ROOTFS" | cut -f1)"
  if [[ -n $TAR ]]; then
    mkdir -p "$CACHE"
    tar -C "$ROOTFS" --numeric-owner -cpf "$TAR.tmp" . && mv "$TAR.tmp" "$TAR"
    echo "cached: $TAR"
  fi
fi
echo "$MACHINE" >"$ROOTFS/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOTFS/etc/hosts"
cp "$DEB" "$ROOTFS/root/"
DEB_IN=/root/$(basename "$DEB")

# ------------------------------------------------------------------ container
boot_container() {   # boot_container LOG: boots it, waits until systemd is up
  local log=$1 i
  [[ -d /run/systemd/nspawn ]] || RUN_NSPAWN_NEW=1
  local opts=(--boot --private-network --machine="$MACHINE" --directory="$ROOTFS" --console=read-only)
  if (( ! HOST_SYSTEMD )); then
    # No systemd (nor machined) on the host: no scope unit, no registration.
    opts+=(--register=no --keep-unit)
    if (( ! ${#CG_NEW[@]} )); then
      local cg
      while IFS= read -r cg; do
        mkdir "$cg/$MACHINE" || die "cannot make the cgroup $cg/$MACHINE"
        CG_NEW+=("$cg/$MACHINE")
      done < <(own_cgroup_dirs)
    fi
  fi
  (
    for d in "${CG_NEW[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
    exec timeout -k 30 "$LIMIT" systemd-nspawn "${opts[@]}"
  ) >"$log" 2>&1 &
  TPID=$!
  for (( i = 0; i < 300; i++ )); do
    NSPAWN=$(pgrep -P "$TPID" | head -1 || true)
    [[ -n $NSPAWN ]] && LEADER=$(pgrep -P "$NSPAWN" | head -1 || true)
    [[ -n $LEADER && $(cat "/proc/$LEADER/comm" 2>/dev/null) == systemd ]] && break
    kill -0 "$TPID" 2>/dev/null || break
    LEADER=''; sleep 0.1
  done
  if [[ -z $LEADER ]]; then
    tail -20 "$log"
    die "systemd-nspawn did not boot the container (log above)"
  fi
  local state=''
  for (( i = 0; i < 90; i++ )); do   # until systemd answers (its socket may not be up yet)
    state=$(in_ct timeout 90 systemctl is-system-running --wait 2>&1 || true)
    [[ $state =~ ^(running|degraded|maintenance|stopping|offline)$ ]] && break
    sleep 1
  done
  echo "container $MACHINE: systemd is up (PID $LEADER on the host), system state: $state"
  if [[ $state != running ]]; then in_ct systemctl --failed --no-pager --plain || true; fi
}
in_ct() {   # a command inside the container (its namespaces, a clean environment)
  timeout 120 nsenter --target "$LEADER" --mount --uts --ipc --net --pid -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
prop() { in_ct systemctl show -P "$1" mqtt-redis-bridge; }

FAILS=()
check() {   # check NAME CONDITION-RESULT(0/1) DETAIL
  if [[ $2 == 0 ]]; then printf 'ok    %s: %s\n' "$1" "$3"
  else printf 'FAIL  %s: %s\n' "$1" "$3"; FAILS+=("$1"); fi
}
wait_ready() {   # wait_ready SECONDS [journalctl args]: the "ready:" line
  local i n=$(( $1 * 2 )) out; shift
  for (( i = 0; i < n; i++ )); do
    out=$(in_ct journalctl -q -o cat -u mqtt-redis-bridge "$@" || true)
    grep -m1 'ready:' <<<"$out" && return 0
    sleep 0.5
  done
  return 1
}
status_lines() {
  local out; out=$(in_ct systemctl status mqtt-redis-bridge --no-pager --lines=0 || true)
  sed -n '1,6p' <<<"$out" | sed 's/^/      /'
}

say "boot 1: install the package"
boot_container "$WORK/boot1.log"
in_ct sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $DEB_IN" \
  >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; die "apt-get install of the package failed in the container"; }
grep -E 'Setting up mqtt-redis-bridge|Created symlink' "$WORK/install.log" | sed 's/^/      /' || true

cfg=$(in_ct cat /etc/mqtt-redis-bridge/bridge.json)
c=0; grep -q 'mqtt://127.0.0.1:1883' <<<"$cfg" && grep -q 'redis://127.0.0.1:6379' <<<"$cfg" || c=1
check "default config" $c "/etc/mqtt-redis-bridge/bridge.json: mqtt://127.0.0.1:1883, redis://127.0.0.1:6379"

enabled=$(in_ct systemctl is-enabled mqtt-redis-bridge || true)
ready=$(wait_ready 20 || true)
active=$(prop ActiveState)/$(prop SubState)
status_lines
check "enabled" "$([[ $enabled == enabled ]]; echo $?)" "is-enabled: $enabled"
check "running" "$([[ $active == active/running ]]; echo $?)" "after install: $active, NRestarts=$(prop NRestarts)"
check "ready" "$([[ -n $ready ]]; echo $?)" "${ready:-no \"ready:\" in journalctl -u mqtt-redis-bridge within 20 s}"

pid=$(prop MainPID)
st=$(in_ct cat "/proc/$pid/status" 2>/dev/null || true)
uid=$(awk '/^Uid:/{print $2}' <<<"$st"); capeff=$(awk '/^CapEff:/{print $2}' <<<"$st")
capbnd=$(awk '/^CapBnd:/{print $2}' <<<"$st"); nnp=$(awk '/^NoNewPrivs:/{print $2}' <<<"$st")
sec=$(awk '/^Seccomp:/{print $2}' <<<"$st")
rootopt=$(in_ct findmnt -n -o OPTIONS -N "$pid" / 2>/dev/null || true)
user=$(in_ct ps -o user= -p "$pid" 2>/dev/null || true)
c=0; [[ -n $uid && $uid != 0 && $capeff == 0000000000000000 && $capbnd == 0000000000000000 && $nnp == 1 && $sec == 2 && $rootopt == ro,* ]] || c=1
check "sandbox" $c "uid $uid (${user:-?}), CapEff $capeff, CapBnd $capbnd, NoNewPrivs $nnp, Seccomp $sec, / ${rootopt%%,*}"

# shellcheck disable=SC2016  # expanded by the sh in the container
got=$(in_ct sh -c '
  mosquitto_sub -h 127.0.0.1 -t user/alice -C 1 -W 15 >/tmp/sub.out 2>&1 & s=$!
  i=0; while [ $i -lt 30 ] && kill -0 $s 2>/dev/null; do
    redis-cli -h 127.0.0.1 PUBLISH user:alice "hi from redis" >/dev/null; sleep 0.5; i=$((i+1)); done
  wait $s; cat /tmp/sub.out' || true)
check "redis->mqtt" "$([[ $got == 'hi from redis' ]]; echo $?)" "redis-cli PUBLISH user:alice -> mosquitto_sub -t user/alice got: '$got'"

# shellcheck disable=SC2016  # expanded by the sh in the container
got=$(in_ct sh -c '
  redis-cli -h 127.0.0.1 SUBSCRIBE user:bob >/tmp/rsub.out 2>&1 & r=$!
  i=0; while [ $i -lt 30 ] && ! grep -qx "hi from mqtt" /tmp/rsub.out; do
    mosquitto_pub -h 127.0.0.1 -q 1 -t user/bob -m "hi from mqtt"; sleep 0.5; i=$((i+1)); done
  kill $r; wait $r 2>/dev/null; grep -x "hi from mqtt" /tmp/rsub.out | head -1' || true)
check "mqtt->redis" "$([[ $got == 'hi from mqtt' ]]; echo $?)" "mosquitto_pub -t user/bob -> redis-cli SUBSCRIBE user:bob got: '$got'"

t0=$(date +%s%N)
src=0; in_ct systemctl stop mqtt-redis-bridge || src=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
after="$(prop ActiveState) Result=$(prop Result) exit status $(prop ExecMainStatus)"
done_line=$(in_ct journalctl -q -o cat -u mqtt-redis-bridge | grep -m1 'shutdown complete' || true)
status_lines
c=0; [[ $src == 0 && $after == 'inactive Result=success exit status 0' && -n $done_line ]] && (( ms < 10000 )) || c=1
check "stop" $c "systemctl stop: rc $src in $ms ms, then $after; log: ${done_line:-no \"shutdown complete\"}"
in_ct journalctl -q --no-pager -u mqtt-redis-bridge >"$WORK/journal1.log" || true

say "boot 2: started at boot"
halt_container
boot_container "$WORK/boot2.log"
ready=$(wait_ready 20 -b || true)
active=$(prop ActiveState)/$(prop SubState)
status_lines
check "running at boot" "$([[ $active == active/running && -n $ready ]]; echo $?)" "$active; ${ready:-no \"ready:\" this boot}"

prc=0; in_ct sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y mqtt-redis-bridge' >"$WORK/purge.log" 2>&1 || prc=$?
load=$(prop LoadState || true); left=$(in_ct sh -c 'ls -d /etc/mqtt-redis-bridge /usr/sbin/mqtt-redis-bridge /lib/systemd/system/mqtt-redis-bridge.service 2>/dev/null' || true)
procs=$(in_ct pgrep -c -x mqtt-redis-brid || true)
c=0; [[ $prc == 0 && $load == not-found && -z $left && ${procs:-0} == 0 ]] || c=1
check "purge" $c "apt-get purge rc $prc; unit $load; bridge processes ${procs:-0}; files left: ${left:-none}"
halt_container

# -------------------------------------------------------------------- verdict
say "result"
echo "took $(( $(date +%s) - START )) s (after the build)"
if (( ${#FAILS[@]} )); then
  echo "FAIL: ${FAILS[*]}"
  echo "journal of the first boot:"; sed 's/^/      /' "$WORK/journal1.log" 2>/dev/null || true
  (( KEEP )) || echo "(--keep leaves the root file system and the logs)"
  exit 1
fi
echo "PASS"
