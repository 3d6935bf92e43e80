# shellcheck shell=bash
# Sourced by bench.sh, demo.sh and test.sh: install Debian packages (and npm
# packages, npm_ci_into) that are missing.
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

# npm_ci_into SRC DEST PATH... : install the npm packages that SRC's
# package.json and package-lock.json pin into DEST (DEST/node_modules) with
# `npm ci`, exactly those, again whenever the lock file changes; skipped
# while every DEST/PATH exists and DEST's lock file is SRC's.
# MRB_SKIP_INSTALL=1 turns a needed install into an error.
npm_ci_into() {
  local src=$1 dest=$2 p stale=0
  shift 2
  for p in "$@"; do [[ -e $dest/$p ]] || stale=1; done
  cmp -s "$src/package-lock.json" "$dest/package-lock.json" || stale=1
  (( stale )) || return 0
  [[ ${MRB_SKIP_INSTALL:-0} == 1 ]] && die "npm packages of $src missing or stale in $dest (MRB_SKIP_INSTALL=1)"
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  echo "installing: the npm packages of $src/package-lock.json into $dest"
  mkdir -p "$dest"
  cp "$src/package.json" "$src/package-lock.json" "$dest/"
  NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false \
    npm ci --prefix "$dest" --loglevel=error
}
