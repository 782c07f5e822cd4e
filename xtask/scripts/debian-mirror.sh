#!/usr/bin/env bash
#! Prints the Debian archive URI this host's apt is already configured with.
# The project names no mirror itself: whatever the machine's apt uses, we use.
set -euo pipefail
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  uri=$(awk '/^URIs:/ {print $2; exit}' "$f" | grep -E '/debian/?$' || true)
  [ -n "$uri" ] && break
done
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
  uri=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list)
fi
[ -n "$uri" ] || { echo "no Debian archive found in /etc/apt sources" >&2; exit 1; }
echo "${uri%/}"
