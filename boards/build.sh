#!/usr/bin/env bash
# boards/build.sh BOARD [--tls] [--static] [--test] [--package]
#
# One command per board: installs what is missing (Debian's cross gcc,
# qemu-user, lintian; with sudo when not root), makes the board's sysroot
# from Debian's own packages for its architecture (boards/sysroot.sh),
# configures a MinSizeRel (-Os) build in build/boards/BOARD[-tls][-static],
# and builds it, warnings fatal (-Werror; -Wconversion on the pure core: on
# the 32-bit armhf board that is what sees a constant that does not fit a
# long).
#   --tls      link Paho's TLS library (-DWITH_TLS=ON; see boards/README.md)
#   --static   fully static binary (-DMRB_STATIC=ON)
#   --minimal  pub/sub routes only: no stream mode or replay, envelopes,
#              stats subcommand or TLS (-DWITH_STREAMS=OFF
#              -DWITH_ENVELOPE=OFF -DWITH_STATS_CMD=OFF), link-time
#              optimised; no tests or package of its own (the full build's
#              cover its code); docs/FOOTPRINT.md gives each preset's size
#   --test     unit tests and the qemu subset of the integration tests
#              (native board: unit + all integration tests)
#   --package  the Debian package (CPack), then check it: dpkg-deb -I/-c,
#              lintian, the packaged binary runs (--version, --check of the
#              packaged config), systemd-analyze security of the unit
# Boards: the directories under boards/ with a board.conf. Works from any cwd.
# Env: MRB_SKIP_INSTALL=1 never calls apt-get; MRB_BOARDS_DIR (default
# build/boards) holds sysroots and build trees.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '\n== %s ==\n' "$*"; }
# shellcheck source=scripts/apt.sh
source "$ROOT/scripts/apt.sh"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  local f boards=()
  for f in "$ROOT"/boards/*/board.conf; do boards+=("$(basename "$(dirname "$f")")"); done
  printf 'boards: %s\n' "${boards[*]}"
}
(( $# )) || { usage; exit 2; }
[[ $1 == -h || $1 == --help ]] && { usage; exit 0; }
BOARD=$1; shift
TLS=0 STATIC=0 TEST=0 PACKAGE=0 MINIMAL=0
for a in "$@"; do
  case $a in
    --tls) TLS=1 ;; --static) STATIC=1 ;; --test) TEST=1 ;; --package) PACKAGE=1 ;;
    --minimal) MINIMAL=1 ;;
    *) die "unknown option $a (see --help)" ;;
  esac
done
BDIR="$ROOT/boards/$BOARD"
[[ -f $BDIR/board.conf ]] || die "no board '$BOARD' (no boards/$BOARD/board.conf)"
DEB_ARCH='' TOOLCHAIN='' QEMU='' CROSS_PKGS=()
# shellcheck source=/dev/null
source "$BDIR/board.conf"

OUT=${MRB_BOARDS_DIR:-$ROOT/build/boards}
mkdir -p "$OUT"
NAME=$BOARD
(( TLS )) && NAME+=-tls
(( STATIC )) && NAME+=-static
(( MINIMAL )) && NAME+=-minimal
if (( MINIMAL && (TLS || TEST || PACKAGE) )); then
  die "--minimal goes without --tls, --test and --package (see --help)"
fi
BUILD="$OUT/$NAME"

# ----------------------------------------------------------------- tools
say "$BOARD: tools"
PKGS=(build-essential cmake pkg-config "${CROSS_PKGS[@]}")
[[ -n $QEMU ]] && PKGS+=(qemu-user)
(( PACKAGE )) && PKGS+=(lintian)
if [[ -z $TOOLCHAIN ]]; then
  PKGS+=(libpaho-mqtt-dev libhiredis-dev libcjson-dev libcmocka-dev)
  (( TLS )) && PKGS+=(libssl-dev)
fi
(( TEST )) && PKGS+=(mosquitto redis-server python3 python3-paho-mqtt python3-redis)
apt_install "${PKGS[@]}"

# --------------------------------------------------------------- sysroot
onoff() { if (( $1 )); then echo ON; else echo OFF; fi; }
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=MinSizeRel -DCMAKE_INSTALL_PREFIX=/usr
            -DMRB_BOARD="$BOARD" -DMRB_WERROR=ON -DMRB_STRICT_CONVERSION=ON
            -DMRB_TESTS=ON -DMRB_BENCH=OFF
            "-DWITH_TLS=$(onoff "$TLS")" "-DMRB_STATIC=$(onoff "$STATIC")")
if (( MINIMAL )); then
  CMAKE_ARGS+=(-DMRB_TESTS=OFF -DWITH_STREAMS=OFF -DWITH_ENVELOPE=OFF -DWITH_STATS_CMD=OFF
               -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=ON)
fi
SYSROOT=
if [[ -n $TOOLCHAIN ]]; then
  say "$BOARD: sysroot ($DEB_ARCH)"
  SYSROOT="$OUT/sysroot-$DEB_ARCH"
  "$ROOT/boards/sysroot.sh" "$DEB_ARCH" "$SYSROOT" \
    libc6-dev libpaho-mqtt-dev libhiredis-dev libcjson-dev libcmocka-dev libssl-dev
  CMAKE_ARGS+=(-DCMAKE_TOOLCHAIN_FILE="$BDIR/$TOOLCHAIN" -DMRB_SYSROOT="$SYSROOT")
fi
if (( STATIC )); then
  say "$BOARD: cJSON source (Debian ships no libcjson.a)"
  "$ROOT/boards/sysroot.sh" --source cjson "$OUT/src-cjson"
  CMAKE_ARGS+=(-DMRB_CJSON_SOURCE_DIR="$OUT/src-cjson")
fi

# ----------------------------------------------------------------- build
say "$BOARD: build ($BUILD)"
cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}" >"$OUT/$NAME.configure.log" 2>&1 \
  || { cat "$OUT/$NAME.configure.log" >&2; die "configure failed"; }
# --minimal: the bridge alone (no man pages; the full build makes them)
TARGET=()
(( MINIMAL )) && TARGET=(--target mqtt-redis-bridge)
cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" "${TARGET[@]}"
BIN="$BUILD/mqtt-redis-bridge"
STRIP=$(sed -n 's/^CMAKE_STRIP:FILEPATH=//p' "$BUILD/CMakeCache.txt")
"${STRIP:-strip}" -o "$BUILD/mqtt-redis-bridge.stripped" "$BIN"
echo "binary: $BIN ($(stat -c %s "$BUILD/mqtt-redis-bridge.stripped") bytes stripped)"

# How to run target binaries here: the emulator of the build (cross) or none.
RUN=()
if [[ -n $QEMU ]]; then
  RUN=("$QEMU" -L "$SYSROOT")
fi

# ----------------------------------------------------------------- tests
if (( TEST )); then
  say "$BOARD: tests"
  if [[ -n $TOOLCHAIN ]]; then labels='^(unit|qemu)$'; else labels='^(unit|integration)$'; fi
  ctest --test-dir "$BUILD" -L "$labels" --output-on-failure --no-tests=error \
        --timeout 600 -j2
fi

# --------------------------------------------------------------- package
if (( PACKAGE )); then
  say "$BOARD: package"
  rm -f "$BUILD"/*.deb
  (cd "$BUILD" && cpack -G DEB >"$BUILD/cpack.log" 2>&1) \
    || { cat "$BUILD/cpack.log" >&2; die "cpack failed"; }
  DEB=$(ls "$BUILD"/*.deb)
  dpkg-deb -I "$DEB"
  listing=$(dpkg-deb -c "$DEB")
  echo "$listing"
  got=$(dpkg-deb -f "$DEB" Architecture)
  [[ $got == "$DEB_ARCH" ]] || die "package architecture is $got, not $DEB_ARCH"
  for f in ./usr/sbin/mqtt-redis-bridge ./etc/mqtt-redis-bridge/bridge.json \
           ./usr/lib/systemd/system/mqtt-redis-bridge.service \
           ./usr/share/man/man8/mqtt-redis-bridge.8.gz \
           ./usr/share/man/man5/mqtt-redis-bridge.json.5.gz; do
    grep -q " $f\$" <<<"$listing" || die "$f missing from the package"
  done
  if command -v lintian >/dev/null 2>&1; then
    # lintian says "running with root privileges is not recommended" as root.
    lintian --fail-on error,warning "$DEB" 2>&1 | grep -v 'root privileges' || true
    lintian --fail-on error,warning "$DEB" >/dev/null 2>&1 || die "lintian found problems (above)"
    echo "lintian: clean"
  else
    echo "lintian: not installed, skipped"
  fi
  x="$BUILD/deb-root"
  rm -rf "$x"; mkdir -p "$x"
  dpkg-deb -x "$DEB" "$x"
  "${RUN[@]}" "$x/usr/sbin/mqtt-redis-bridge" --version
  "${RUN[@]}" "$x/usr/sbin/mqtt-redis-bridge" --check -c "$x/etc/mqtt-redis-bridge/bridge.json" \
    | tail -n 1
  if command -v systemd-analyze >/dev/null 2>&1; then
    # Exposure score 0-10 (lower is better); fail above 2.0.
    systemd-analyze security --offline=yes --threshold=20 --root="$x" \
      "$x/usr/lib/systemd/system/mqtt-redis-bridge.service" | tail -n 1
  fi
  echo "package: $DEB"
fi
