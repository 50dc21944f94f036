#!/usr/bin/env bash
# Builds Kueue from its Go module into Zeroth's cache, once per version, with its CRDs and webhook
# manifests taken from the same module. Prints the directory (bin/kueue, crds/, webhooks.yaml).
#
# Built from a copy of the module's source with one line changed, and nothing else: when Kueue does
# not manage its own certificates it reads its metrics server's certificate from the hard-coded
# /etc/kueue/metrics/certs; the copy reads that directory from $KUEUE_METRICS_CERT_DIR instead, so
# that a Kueue started by hack/kueue.py needs nothing written under /etc.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KUEUE_VERSION=0.17.0  # built against client-go v0.35; the control plane (hack/versions.env) is 1.36
# shellcheck source=hack/goenv.sh
source "$here/goenv.sh"
key=$(sha256sum < "$here/build-kueue.sh" | cut -c1-12)
out=$ZEROTH_CACHE/kueue/$KUEUE_VERSION-$key
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi
log() { echo "[build-kueue] $*" >&2; }
mkdir -p "$out/bin" "$out/crds"
src=$(cd "$here" && go mod download -json "sigs.k8s.io/kueue@v$KUEUE_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
rm -rf "$out/src" && cp -r "$src" "$out/src" && chmod -R u+w "$out/src"
main=$out/src/cmd/kueue/main.go
grep -q '"/etc/kueue/metrics/certs"' "$main" || { log "the metrics cert path moved in $main: update this script"; exit 1; }
sed -i 's|"/etc/kueue/metrics/certs"|os.Getenv("KUEUE_METRICS_CERT_DIR")|' "$main"
t0=$SECONDS
log "building Kueue v$KUEUE_VERSION (first time: about 3 min on 2 cores with the Go caches warm) ..."
(cd "$out/src" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=v$KUEUE_VERSION" \
  -o "$out/bin/kueue" ./cmd/kueue)
cp "$out"/src/config/components/crd/bases/*.yaml "$out/crds/"
cp "$out/src/config/components/webhook/manifests.yaml" "$out/webhooks.yaml"
rm -rf "$out/src"
log "Kueue built in $((SECONDS - t0)) s"
touch "$out/.complete"
echo "$out"
