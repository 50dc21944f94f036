#!/usr/bin/env bash
# Builds the local control plane from upstream Go modules into Zeroth's cache, once per version set:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, and the real node's kubelet
# and kube-proxy (one multi-call binary, hack/kube), kwok and helm (go install at pinned tags).
# Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
source "$here/goenv.sh"
key=$(cat "$here/versions.env" "$here/build-cluster.sh" "$here"/kube/go.mod "$here"/kube/go.sum "$here"/kube/main.go | sha256sum | cut -c1-12)
out=$ZEROTH_CACHE/k8s/$KUBE_VERSION-$key
if [ -f "$out/.complete" ]; then echo "$out/bin"; exit 0; fi
mkdir -p "$out/bin"
log() { echo "[build-cluster] $*" >&2; }
minor=${KUBE_VERSION#*.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
t0=$SECONDS
log "building Kubernetes v$KUBE_VERSION control plane (first time: about 7 min on 2 cores) ..."
(cd "$here/kube" && go build -trimpath -ldflags "$ldflags" -o "$out/bin/zkube" .)
for n in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kubelet kube-proxy; do ln -sf zkube "$out/bin/$n"; done
log "zkube built in $((SECONDS - t0)) s"
t0=$SECONDS
GOBIN=$out/bin go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
# kwok's own stage definitions (node heartbeats, pods Running, Job pods Succeeded, deletion, and
# the chaos stage that fails a Running pod labelled for it), taken from the module at the same tag.
stages=$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK_VERSION/kustomize/stage
mkdir -p "$out/kwok-stages"
cp "$stages"/node/fast/node-initialize.yaml "$stages"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
   "$stages"/pod/fast/pod-ready.yaml "$stages"/pod/fast/pod-complete.yaml "$stages"/pod/fast/pod-delete.yaml \
   "$stages"/pod/chaos/pod-container-running-failed.yaml "$out/kwok-stages/"
chmod -R u+w "$out/kwok-stages"
log "kwok built in $((SECONDS - t0)) s"
t0=$SECONDS
GOBIN=$out/bin go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
log "helm built in $((SECONDS - t0)) s"
touch "$out/.complete"
echo "$out/bin"
