# shellcheck shell=bash
# Sourced by demo.sh and test.sh: install Debian packages that are missing.
# Needs a die() function. apt-get update runs once, and only if something is
# missing. MRB_SKIP_INSTALL=1 turns a missing package into an error.

SUDO=()
if (( EUID != 0 )); then
  command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing: install the packages by hand"
  SUDO=(sudo)
fi

APT_UPDATED=0
apt_install() {   # apt_install PKG... : installs only the packages not installed yet
  local missing=() p
  command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: Debian/Ubuntu only"
  for p in "$@"; do
    if [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) != ii* ]]; then
      missing+=("$p")
    fi
  done
  (( ${#missing[@]} )) || return 0
  [[ ${MRB_SKIP_INSTALL:-0} == 1 ]] && die "missing packages (MRB_SKIP_INSTALL=1): ${missing[*]}"
  echo "installing: ${missing[*]}"
  if (( ! APT_UPDATED )); then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    APT_UPDATED=1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}
