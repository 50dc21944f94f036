#!/usr/bin/env bash
# Fetches Debian's prometheus package (the server and promtool, static Go binaries) into Zeroth's
# cache, once per version: `apt-get download` and `dpkg-deb -x`, nothing installed into the system.
# Tests check the chart's alert rules with promtool, and scrape a real run with the server.
# Prints the bin directory (prometheus, promtool).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ZEROTH_CACHE=${ZEROTH_CACHE:-$HOME/.cache/zeroth}
PROMETHEUS_VERSION=2.42.0  # bookworm's; the Debian revision (security updates) is whatever apt offers
key=$(sha256sum < "$here/build-prometheus.sh" | cut -c1-12)
out=$ZEROTH_CACHE/prometheus/$PROMETHEUS_VERSION-$key
if [ -f "$out/.complete" ]; then echo "$out/usr/bin"; exit 0; fi
log() { echo "[build-prometheus] $*" >&2; }
fail() { log "$*"; exit 1; }
candidate=$(apt-cache policy prometheus | sed -n 's/^ *Candidate: //p')
case $candidate in
  "$PROMETHEUS_VERSION"+*) ;;
  "" | "(none)") fail "apt knows no prometheus package: run 'apt-get update' (Debian bookworm's main lists it), then retry" ;;
  *) fail "apt offers prometheus $candidate, not $PROMETHEUS_VERSION: update PROMETHEUS_VERSION in $0 if the rules' tests pass with it" ;;
esac
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
# apt drops to its unprivileged _apt user to download, which cannot write into a private temp dir
(cd "$tmp" && apt-get download -o APT::Sandbox::User=root "prometheus=$candidate" >"$tmp/apt.log" 2>&1) ||
  fail "apt-get download prometheus=$candidate failed (a stale index after a point release, or no route to the Debian mirror): run 'apt-get update' and retry. apt said:
$(cat "$tmp/apt.log")"
rm -rf "$out" && mkdir -p "$out"
dpkg-deb -x "$tmp"/prometheus_*.deb "$out"
for tool in prometheus promtool; do
  "$out/usr/bin/$tool" --version >/dev/null 2>&1 || fail "$out/usr/bin/$tool does not run"
done
echo "$candidate" > "$out/debian-version"
log "prometheus $candidate unpacked into $out"
touch "$out/.complete"
echo "$out/usr/bin"
