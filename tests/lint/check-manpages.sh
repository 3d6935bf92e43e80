#!/usr/bin/env bash
# The generated man pages (mqtt-redis-bridge.8, mqtt-redis-bridge.json.5)
# format without a single groff warning (-ww: all of them), and mdoc/man
# macro use is checked as man-db's `man --warnings` would.
# Usage: check-manpages.sh PAGE...
set -u
command -v groff >/dev/null 2>&1 || { echo "groff not found (apt install groff-base)"; exit 1; }
(( $# > 0 )) || { echo "usage: $0 PAGE..."; exit 2; }
rc=0
for page in "$@"; do
  if [[ ! -s $page ]]; then
    echo "$page: missing or empty"; rc=1; continue
  fi
  out=$(groff -ww -man -z "$page" 2>&1)
  if [[ -n $out ]]; then
    echo "$page: groff -ww -man -z warns:"; printf '%s\n' "$out"; rc=1
  else
    echo "$page: no groff warnings"
  fi
done
exit $rc
