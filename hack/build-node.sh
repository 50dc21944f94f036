#!/usr/bin/env bash
# Builds what the real node of hack/node.py runs, into Zeroth's cache, once per version set:
# containerd 2 (containerd, ctr, containerd-shim-runc-v2), the CNI plugins (bridge, host-local,
# loopback, portmap), CoreDNS (hack/coredns: only the plugins cluster DNS needs), the NetworkPolicy
# enforcer kube-router (its firewall alone; hack/node.py says why not kube-network-policies), all
# from their Go modules at the tags in hack/versions.env; and two
# OCI image archives: the pause (sandbox) image, compiled from pause.c of the pinned k8s.io/kubernetes
# module with `gcc -static`, and a test image holding Debian's busybox-static and curl (with the
# libraries it links: busybox's own wget crashes). runc, umoci, busybox-static and curl come from
# Debian (installed here if missing). The kubelet and kube-proxy are in
# hack/kube's multi-call binary (hack/build-cluster.sh). Prints the output directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
source "$here/goenv.sh"
log() { echo "[build-node] $*" >&2; }

need=()
command -v runc >/dev/null || need+=(runc)
command -v umoci >/dev/null || need+=(umoci)
[ -x /bin/busybox ] && busybox --list | grep -qx ssl_client || need+=(busybox-static)
command -v curl >/dev/null || need+=(curl)
command -v iptables >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v ipset >/dev/null || need+=(ipset)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

key=$( (cat "$here/versions.env" "$here/build-node.sh" "$here"/coredns/go.mod "$here"/coredns/go.sum "$here"/coredns/main.go
        dpkg-query -W runc umoci busybox-static curl libcurl4 2>/dev/null) | sha256sum | cut -c1-12)
out=$ZEROTH_CACHE/node/$key
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi
rm -rf "$out"; mkdir -p "$out/bin" "$out/cni" "$out/images"
export CGO_ENABLED=0  # static binaries; containerd's cgo-only btrfs snapshotter is left out

t0=$SECONDS
log "building the real node's parts (first time: about 4 min on 2 cores: containerd 1.5, CoreDNS 1, kube-router 1.5) ..."
for c in containerd ctr containerd-shim-runc-v2; do
  GOBIN=$out/bin go install -trimpath -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=v$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/$c@v$CONTAINERD_VERSION"
done
log "containerd built in $((SECONDS - t0)) s"

t0=$SECONDS
for p in main/bridge main/loopback ipam/host-local meta/portmap; do
  GOBIN=$out/cni go install -trimpath -ldflags "-s -w" "github.com/containernetworking/plugins/plugins/$p@v$CNI_PLUGINS_VERSION"
done
log "CNI plugins built in $((SECONDS - t0)) s"

t0=$SECONDS
(cd "$here/coredns" && go build -trimpath -ldflags "-s -w" -o "$out/bin/coredns" .)
log "CoreDNS built in $((SECONDS - t0)) s"

t0=$SECONDS
GOBIN=$out/bin go install -trimpath -ldflags "-s -w" "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@v$KUBE_ROUTER_VERSION"
log "kube-router built in $((SECONDS - t0)) s"

# One-file OCI image archives (an OCI layout in a tar, as `ctr images import` reads them).
oci_archive() {  # NAME TAG ROOTFS_DIR ARCHIVE ENTRYPOINT
  local name=$1 tag=$2 rootfs=$3 archive=$4
  local layout; layout=$(mktemp -d)
  umoci init --layout "$layout/oci"
  umoci new --image "$layout/oci:$tag"
  umoci insert --image "$layout/oci:$tag" "$rootfs" /
  umoci config --image "$layout/oci:$tag" --config.entrypoint "$5" \
    --config.user 0:0 --author zeroth --manifest.annotation "org.opencontainers.image.title=$name"
  umoci gc --layout "$layout/oci"
  tar -C "$layout/oci" -cf "$archive" .
  rm -rf "$layout"
}

t0=$SECONDS
pause_src=$(go env GOMODCACHE)/k8s.io/kubernetes@v$KUBE_VERSION/build/pause/linux/pause.c
[ -f "$pause_src" ] || go mod download "k8s.io/kubernetes@v$KUBE_VERSION"
root=$(mktemp -d)
gcc -Os -static -DVERSION="v$PAUSE_VERSION-zeroth" -o "$root/pause" "$pause_src"
strip "$root/pause"
oci_archive pause "$PAUSE_VERSION" "$root" "$out/images/pause.tar" /pause
rm -rf "$root"

root=$(mktemp -d)
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
for f in /usr/bin/curl $(ldd /usr/bin/curl | awk '$(NF-1) ~ /^\// {print $(NF-1)} $1 ~ /^\// {print $1}'); do
  mkdir -p "$root$(dirname "$f")"; cp -L "$f" "$root$f"
done
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> "$root/etc/passwd"
chmod 1777 "$root/tmp"
oci_archive busybox test "$root" "$out/images/busybox.tar" /bin/sh
rm -rf "$root"
log "pause and test images built in $((SECONDS - t0)) s"

touch "$out/.complete"
echo "$out"
