#!/usr/bin/env bash
# boards/sysroot.sh DEB_ARCH DIR [PKG...]
# boards/sysroot.sh --source SRCPKG DIR
#
# Makes DIR a sysroot of Debian's own DEB_ARCH packages (libc6-dev and the
# bridge's -dev libraries, multiarch layout) for the cross compilers, the
# linker and qemu-user. It never changes the host's apt configuration and
# installs nothing into the host: it runs apt-get with a private state
# directory under DIR.apt (sources taken from the host's Debian entries,
# restricted to DEB_ARCH), downloads the packages with their dependencies,
# and unpacks them with dpkg-deb -x. Why not `dpkg --add-architecture` and
# multiarch installs:
#   - on this project's mirror, adding armhf makes the host's `apt-get update`
#     fail (the bookworm-security armhf index has the wrong size), which
#     breaks every later apt-get of the machine;
#   - a foreign libssl3 (pulled in by libpaho-mqtt1.3) must then have exactly
#     the host's version, which the security suite may not have yet;
#   - qemu-user with `-L DIR` needs a loader and a libc of one version: the
#     cross toolchain's /usr/<triple> (libc6-<arch>-cross) and the multiarch
#     libc6:<arch> differ, and Paho's threads crash on the mix.
# Here the loader, libc and every library come from the same suite.
#
# If the security suite's index for DEB_ARCH cannot be fetched, the sysroot
# is made from the main and -updates suites and a warning says so (the
# sysroot only serves building and tests; a board runs its own libraries).
# Idempotent: a stamp records the package list; a second run with the same
# list does nothing.
#
# --source SRCPKG DIR: unpack Debian's source package SRCPKG (with Debian's
# patches applied, dpkg-source -x) as DIR, the same way (private apt state,
# deb-src entries for the host's suites). The static build uses it for
# cJSON, of which Debian ships no static library.
set -euo pipefail

die() { printf 'sysroot.sh: error: %s\n' "$*" >&2; exit 1; }
(( $# >= 2 )) || die "usage: boards/sysroot.sh DEB_ARCH DIR [PKG...] | --source SRCPKG DIR"
ARCH=$1 DIR=$2
shift 2
SRCPKG=
if [[ $ARCH == --source ]]; then
  SRCPKG=$DIR DIR=$1 ARCH=source
  (( $# == 1 )) || die "usage: boards/sysroot.sh --source SRCPKG DIR"
  set --
  command -v dpkg-source >/dev/null 2>&1 || die "dpkg-source not found (dpkg-dev)"
fi
PKGS=("$@")
(( ${#PKGS[@]} )) || PKGS=(libc6-dev libpaho-mqtt-dev libhiredis-dev libcjson-dev)

for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian/Ubuntu only)"
done
# shellcheck disable=SC1091
. /etc/os-release
CODENAME=${VERSION_CODENAME:?/etc/os-release has no VERSION_CODENAME}

STAMP="$DIR/.mrb-sysroot"
WANT="$ARCH $CODENAME ${SRCPKG:-${PKGS[*]}}"
if [[ -f $STAMP && $(cat "$STAMP") == "$WANT" ]]; then
  echo "$DIR: up to date ($WANT)"
  exit 0
fi

APTDIR="$DIR.apt"
rm -rf "$DIR" "$APTDIR"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/archives/partial" "$APTDIR/prefs.d" "$DIR"

# The host's own Debian repositories for this release (whatever mirror the
# machine uses), main component only.
# shellcheck disable=SC2016  # $(...) are apt's format fields, not shell
mapfile -t REPOS < <(apt-get indextargets --no-release-info \
    --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null \
  | awk -v c="$CODENAME" '$2 == c || $2 == c "-updates" || $2 == c "-security"' | sort -u)
(( ${#REPOS[@]} )) || die "no $CODENAME entries in the host's apt sources"

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
write_sources() {   # write_sources SKIP_SUITE_REGEX
  local line uri suite opts="arch=$ARCH" kind=deb
  [[ -n $SRCPKG ]] && opts="" kind=deb-src
  [[ -r $KEYRING ]] && opts+=" signed-by=$KEYRING"
  opts=${opts# }
  : > "$APTDIR/sources.list"
  for line in "${REPOS[@]}"; do
    read -r uri suite <<<"$line"
    [[ -n $1 && $suite =~ $1 ]] && continue
    echo "$kind [$opts] $uri $suite main" >> "$APTDIR/sources.list"
  done
}

APT=(apt-get -q
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root
  -o Dir::Etc::SourceList="$APTDIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts="$APTDIR/prefs.d"
  -o Dir::State="$APTDIR" -o Dir::State::Lists="$APTDIR/lists"
  -o Dir::State::status=/dev/null -o Dir::Cache="$APTDIR"
  -o Dir::Cache::Archives="$APTDIR/archives"
  -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache=""
  -o APT::Install-Recommends=0)
[[ -n $SRCPKG ]] || APT+=(-o APT::Architecture="$ARCH" -o APT::Architectures::="$ARCH")

write_sources ""
if ! "${APT[@]}" update >"$APTDIR/update.log" 2>&1; then
  grep -E '^(E|W):' "$APTDIR/update.log" | head -n 5 >&2 || true
  echo "sysroot.sh: warning: apt-get update for $ARCH failed (above); retrying without $CODENAME-security" >&2
  rm -rf "$APTDIR/lists"; mkdir -p "$APTDIR/lists/partial"
  write_sources -security
  "${APT[@]}" update >"$APTDIR/update.log" 2>&1 \
    || { cat "$APTDIR/update.log" >&2; die "apt-get update for $ARCH failed"; }
fi

if [[ -n $SRCPKG ]]; then
  rm -rf "$DIR"
  (cd "$APTDIR" && "${APT[@]}" source --download-only "$SRCPKG" >"$APTDIR/download.log" 2>&1) \
    || { tail -n 20 "$APTDIR/download.log" >&2; die "downloading source package $SRCPKG failed"; }
  dsc=$(find "$APTDIR" -maxdepth 1 -name "${SRCPKG}_*.dsc" | head -n 1)
  [[ -n $dsc ]] || die "no .dsc for $SRCPKG"
  dpkg-source --no-check -x "$dsc" "$DIR" >/dev/null
  echo "$WANT" > "$STAMP"
  echo "source $DIR: $(basename "$dsc" .dsc)"
  exit 0
fi

"${APT[@]}" install --download-only -y "${PKGS[@]/%/:$ARCH}" >"$APTDIR/download.log" 2>&1 \
  || { tail -n 20 "$APTDIR/download.log" >&2; die "downloading $ARCH packages failed"; }

n=0
for deb in "$APTDIR"/archives/*.deb; do
  dpkg-deb -x "$deb" "$DIR"
  n=$((n + 1))
done
(( n )) || die "no packages downloaded for $ARCH"

# Merged /usr, as on the board: /lib, /bin, /sbin are links into /usr.
for d in lib bin sbin; do
  if [[ -d $DIR/$d && ! -L $DIR/$d ]]; then
    mkdir -p "$DIR/usr/$d"
    cp -a "$DIR/$d/." "$DIR/usr/$d/"
    rm -rf "${DIR:?}/$d"
  fi
  [[ -e $DIR/$d ]] || ln -s "usr/$d" "$DIR/$d"
done
# Absolute symlinks (e.g. libfoo.so -> /lib/...) would point into the host.
while IFS= read -r -d '' link; do
  target=$(readlink "$link")
  rel=$(realpath -m --relative-to="$(dirname "$link")" "$DIR$target")
  ln -sfn "$rel" "$link"
done < <(find "$DIR" -type l -lname '/*' -print0)

echo "$WANT" > "$STAMP"
echo "sysroot $DIR: $n $ARCH packages from $(wc -l < "$APTDIR/sources.list") suites"
sed -E 's/\[[^]]*\] //' "$APTDIR/sources.list"
