#!/usr/bin/env bash
# Lints the Docker files: docker-compose.yml (docker-compose config), the
# Dockerfile (dockerfilelint), plus a few project rules. No Docker engine
# needed. Exits non-zero on any finding or when a tool is missing
# (scripts/test.sh installs both tools).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

findings=0
fail() { printf 'check-docker: FAIL: %s\n' "$*" >&2; findings=$((findings + 1)); }
ok() { printf 'check-docker: ok: %s\n' "$*"; }

# --- tools ------------------------------------------------------------------
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "check-docker: docker-compose not found: apt-get install docker-compose (scripts/test.sh installs it)" >&2
  exit 2
fi
DFL=${DOCKERFILELINT:-}
if [[ -z $DFL ]]; then
  if command -v dockerfilelint >/dev/null 2>&1; then
    DFL=$(command -v dockerfilelint)
  elif [[ -x $ROOT/build/_tools/node_modules/.bin/dockerfilelint ]]; then
    DFL=$ROOT/build/_tools/node_modules/.bin/dockerfilelint
  fi
fi
if [[ -z $DFL || ! -x $DFL ]]; then
  echo "check-docker: dockerfilelint not found: npm install dockerfilelint (scripts/test.sh installs it into build/_tools)" >&2
  exit 2
fi

for f in Dockerfile docker-compose.yml .dockerignore docker/mosquitto.conf; do
  [[ -f $f ]] || { fail "$f is missing"; }
done
(( findings == 0 )) || exit 1

# --- docker-compose.yml -----------------------------------------------------
err=$(mktemp)
trap 'rm -f "$err"' EXIT
if ! resolved=$(docker-compose -f docker-compose.yml config 2>"$err"); then
  cat "$err" >&2
  fail "docker-compose config rejected docker-compose.yml"
else
  if [[ -s $err ]]; then cat "$err" >&2; fail "docker-compose config printed warnings"; fi
  if docker-compose -f docker-compose.yml config -q 2>/dev/null; then ok "docker-compose config -q"; else fail "docker-compose config -q"; fi

  # Every published port must be bound to the host's loopback only.
  bad_ports=$(awk '
    /^[ ]*ports:[ ]*$/ { inports = 1; ind = match($0, /[^ ]/); next }
    inports {
      i = match($0, /[^ ]/)
      if ($0 ~ /^[ ]*- / && i >= ind) {
        v = $0; sub(/^[ ]*- /, "", v); gsub(/["\047]/, "", v)
        if (v !~ /^127\.0\.0\.1:[0-9]+:[0-9]+(\/(tcp|udp))?$/) print v
      } else if (i <= ind) { inports = 0 }
    }' <<<"$resolved")
  if [[ -n $bad_ports ]]; then
    fail "published ports not bound to 127.0.0.1 (use \"127.0.0.1:HOST:CONTAINER\"): $(tr '\n' ' ' <<<"$bad_ports")"
  else
    ok "published ports bound to 127.0.0.1"
  fi
  for svc in redis mosquitto bridge; do
    grep -q "^  $svc:" <<<"$resolved" || fail "service '$svc' missing from docker-compose.yml"
  done
fi

# --- Dockerfile -------------------------------------------------------------
if "$DFL" Dockerfile; then ok "dockerfilelint Dockerfile"; else fail "dockerfilelint found issues in Dockerfile"; fi

# The runtime (last) stage must drop root and have an exec-form ENTRYPOINT.
last_stage=$(awk 'toupper($1) == "FROM" { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' Dockerfile)
user=$(awk 'toupper($1) == "USER" { u = $2 } END { print u }' <<<"$last_stage")
if [[ -z $user || $user == root || $user == 0 || $user == root:* || $user == 0:* ]]; then
  fail "the runtime stage of Dockerfile must set a non-root USER (got '${user:-none}')"
else
  ok "runtime stage runs as USER $user"
fi
if grep -Eq '^ENTRYPOINT[[:space:]]+\[' <<<"$last_stage"; then
  ok "exec-form ENTRYPOINT"
else
  fail "the runtime stage of Dockerfile needs an exec-form ENTRYPOINT [\"...\"]"
fi

# --- .dockerignore ----------------------------------------------------------
for pat in .git build; do
  grep -qxF "$pat" .dockerignore || fail ".dockerignore must exclude '$pat'"
done

if (( findings )); then
  echo "check-docker: $findings finding(s)" >&2
  exit 1
fi
echo "check-docker: all checks passed"
