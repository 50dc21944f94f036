#!/usr/bin/env bash
# Builds Zeroth's image without a daemon: `make image` (FLAVOUR cpu or cuda, REF its name:tag).
# Prints the path of an OCI archive holding the image tagged REF on stdout; progress on stderr.
#
#   hack/build-image.sh cpu ghcr.io/zeroth-dev/zeroth:0.1.0
#
# The same four layers as the Dockerfile, from the same steps (hack/image/setup.sh):
#   base   Debian from deb.debian.org by mmdebstrap, with hack/image/packages.txt; `setup.sh base`
#   deps   the virtualenv from the lock, with uv from the wheels `make venv` put in uv's cache
#   app    Zeroth from this checkout's package sources (a wheel, not editable)
#   model  the built-in tiny base model: for cpu copied from the cache `make model` built it in,
#          for cuda built in the image (its lock has vLLM's transformers, another recipe)
# Each step runs in a chroot of an overlay over the layers below it; what it writes (the overlay's
# upper folder) is its layer, kept under $ZEROTH_CACHE/image keyed by its inputs and those of the
# layers below, so a source edit rebuilds only the small app and model layers. umoci (built from its
# Go module) assembles the OCI image, with the configuration (ENV, USER, WORKDIR, ENTRYPOINT, CMD)
# read from the Dockerfile; skopeo (Debian) writes the archive that containerd imports or a
# registry takes (skopeo copy oci-archive:FILE docker://REGISTRY/zeroth:TAG).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
source "$here/versions.env"
source "$here/goenv.sh"
flavour=${1:?usage: build-image.sh cpu|cuda NAME:TAG}
ref=${2:?usage: build-image.sh cpu|cuda NAME:TAG}
uv=${UV:?UV: the uv binary (the Makefile sets it)}
: "${UV_CACHE_DIR:?UV_CACHE_DIR: the uv cache make venv filled}"
cache=$ZEROTH_CACHE/image
layers=$cache/layers
oci=$cache/oci
log() { echo "[build-image] $*" >&2; }
die() { echo "[build-image] error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, chroot and overlay mounts); build with Docker or Podman instead: see the Dockerfile"
mkdir -p "$layers" "$cache/tools"

# --- tools ------------------------------------------------------------------------------------
for tool in mmdebstrap skopeo; do
  command -v "$tool" >/dev/null || { log "installing $tool from Debian"; apt-get install -y -qq --no-install-recommends "$tool" >&2; }
done
umoci=$cache/tools/umoci-$UMOCI_VERSION
if [ ! -x "$umoci" ]; then
  log "building umoci v$UMOCI_VERSION from its Go module (once, about 15 s)"
  go mod download "github.com/opencontainers/umoci@v$UMOCI_VERSION"
  (cd "$(go env GOMODCACHE)/github.com/opencontainers/umoci@v$UMOCI_VERSION" &&
     go build -trimpath -ldflags "-s -w -X main.version=$UMOCI_VERSION" -o "$umoci.tmp" ./cmd/umoci)
  mv "$umoci.tmp" "$umoci"
fi

# --- keys -------------------------------------------------------------------------------------
hash() { sha256sum | cut -c1-12; }
# The package sources of the wheel, as the Dockerfile's build context has them (untracked files
# included, ignored ones not), copied to a scratch tree the build may write into.
src=$(mktemp -d "$cache/src.XXXXXX")
trap 'rm -rf "$src"' EXIT
(cd "$root" && git ls-files -z -co --exclude-standard --deduplicate -- pyproject.toml README.md LICENSE \
   zeroth operator trainer rollout hack/image requirements.lock requirements-cuda.lock |
   xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _ |
   tar --null -T - -cf - | tar -xf - -C "$src")
tree_hash() { (cd "$src" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - "$@" | hash); }
lock=requirements.lock; [ "$flavour" = cuda ] && lock=requirements-cuda.lock
[ "$flavour" = cpu ] || [ "$flavour" = cuda ] || die "flavour must be cpu or cuda, got '$flavour'"
[ -f "$src/$lock" ] || die "$lock is missing: run make lock"
# The cpu flavour has the tests' versions of torch and transformers, so the model `make model` built
# is the image's; the cuda flavour's lock has others (vLLM's), so its model is built in the image.
model_dir=$("$ZEROTH_PY" -c 'from zeroth.trainer import models; print(models.tiny_arith_location())')
[ -d "$model_dir" ] || die "$model_dir is missing: run make model"
model_arg=("/mnt/model/${model_dir##*/}")
if [ "$flavour" = cuda ]; then model_arg=(); fi
# The cpu flavour installs exactly the wheels `make venv` put in uv's cache (offline); the cuda
# flavour's (vLLM and its CUDA libraries) are downloaded from PyPI the first time.
offline=1; [ "$flavour" = cpu ] || offline=0

# --- steps ------------------------------------------------------------------------------------
# in_root LAYER [LOWER...] -- CMD...: runs CMD as root in a chroot of LAYER over the LOWER layers
# (topmost first), in a mount namespace of its own: /proc, /dev, and tmpfs on /tmp, /root and /mnt,
# which holds the sources (/mnt/src), uv (/mnt/bin) and its cache (/mnt/uv-cache), and the model
# (/mnt/model/NAME). Nothing but CMD's own writes lands in LAYER. The host's SSL_CERT_FILE, when
# set (a proxy's CA), is bound at /mnt/ca.pem for uv's downloads only; the image keeps Debian's CAs.
in_root() {
  local layer=$1; shift
  local lowers=(); while [ "$1" != -- ]; do lowers+=("$1"); shift; done; shift
  local lower_opt; lower_opt=$(IFS=:; echo "${lowers[*]}")
  rm -rf "$layer.work" "$layer.merged"; mkdir -p "$layer" "$layer.work" "$layer.merged"
  unshare --mount --propagation private -- bash -euc '
    layer=$1 lower=$2 src=$3 uv=$4 uvcache=$5 model=$6 offline=$7 cafile=$8; shift 8; m=$layer.merged
    if [ -n "$lower" ]; then
      mount -t overlay overlay -o "lowerdir=$lower,upperdir=$layer,workdir=$layer.work" "$m"
    else
      mount --bind "$layer" "$m"
    fi
    mount -t proc proc "$m/proc"; mount --rbind /dev "$m/dev"
    for d in tmp root mnt; do mount -t tmpfs tmpfs "$m/$d"; done
    mkdir -p "$m/mnt/src" "$m/mnt/bin" "$m/mnt/uv-cache" "$m/mnt/model/${model##*/}"; touch "$m/mnt/bin/uv"
    mount --bind "$src" "$m/mnt/src"; mount --bind "$uv" "$m/mnt/bin/uv"; mount --bind "$uvcache" "$m/mnt/uv-cache"
    mount --bind "$model" "$m/mnt/model/${model##*/}"; mount --bind /etc/resolv.conf "$m/etc/resolv.conf"
    ca=()
    if [ -n "$cafile" ]; then touch "$m/mnt/ca.pem"; mount --bind "$cafile" "$m/mnt/ca.pem"; ca=(SSL_CERT_FILE=/mnt/ca.pem); fi
    exec chroot "$m" /usr/bin/env -i PATH=/mnt/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      UV_CACHE_DIR=/mnt/uv-cache UV_OFFLINE="$offline" "${ca[@]}" "$@"
  ' in_root "$layer" "$lower_opt" "$src" "$uv" "$UV_CACHE_DIR" "$model_dir" "$offline" "${SSL_CERT_FILE:-}" "$@"
  rmdir "$layer.merged"; rm -rf "$layer.work"
  # a deletion in an overlay's upper folder is a character device; no step deletes from a layer below
  if [ "${#lowers[@]}" -gt 0 ] && [ -n "$(find "$layer" -type c -print -quit)" ]; then
    die "a step deleted files of a layer below it: $layer"
  fi
}

# build_base DIR: the base layer's root filesystem: Debian by mmdebstrap, then `setup.sh base`
build_base() {
  local d=$1
  log "base: Debian $DEBIAN_SUITE with $(grep -v '^#' "$here/image/packages.txt" | paste -sd, -) (mmdebstrap, about 40 s)"
  mmdebstrap --quiet --variant=minbase --mode=root --include="$(grep -v '^#' "$here/image/packages.txt" | paste -sd, -)" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    "$DEBIAN_SUITE" "$d" "deb http://deb.debian.org/debian $DEBIAN_SUITE main" \
    "deb http://deb.debian.org/debian $DEBIAN_SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main" >&2
  # the runtime provides these (an empty resolv.conf stays, for the steps' chroot to bind the host's on)
  : > "$d/etc/resolv.conf"; rm -f "$d/etc/hostname"; find "$d/dev" -mindepth 1 -delete
  in_root "$d" -- /mnt/src/hack/image/setup.sh base
}

# add_layer FROM_TAG TAG DIR STEP: the image TAG is FROM_TAG (or nothing) plus DIR as one layer
add_layer() {
  local from=$1 tag=$2 dir=$3 step=$4
  if [ -n "$from" ]; then "$umoci" tag --image "$oci:$from" "$tag"; else "$umoci" new --image "$oci:$tag"; fi
  "$umoci" raw add-layer --image "$oci:$tag" --history.created_by "hack/image/setup.sh $step" \
    <(tar --sort=name --numeric-owner -C "$dir" -cf - .)
}

# The base's key: the packages, the steps, and how a layer is made (these functions' own text)
base_key=$( (cat "$here/image/packages.txt" "$here/image/setup.sh"; echo "$DEBIAN_SUITE"; declare -f build_base in_root add_layer) | hash)
deps_key=$( (echo "$base_key $flavour"; cat "$src/$lock") | hash)
app_key=$( (echo "$deps_key"; tree_hash pyproject.toml README.md zeroth operator trainer rollout) | hash)
model_key=$(echo "$app_key $(basename "$model_dir")" | hash)
if [ "$flavour" = cuda ]; then model_key=$app_key; fi

have_tag() { "$umoci" list --layout "$oci" 2>/dev/null | grep -qx "$1"; }
[ -d "$oci" ] || "$umoci" init --layout "$oci"
t_all=$SECONDS
if ! have_tag "base-$base_key"; then
  t0=$SECONDS; d=$layers/base-$base_key; rm -rf "$d"
  build_base "$d"
  add_layer "" "base-$base_key" "$d" base
  log "base layer in $((SECONDS - t0)) s"
fi
if ! have_tag "deps-$flavour-$deps_key"; then
  t0=$SECONDS; d=$layers/deps-$flavour-$deps_key; rm -rf "$d"
  log "deps: the virtualenv from $lock (a few minutes: about 6 GB, compiled to bytecode)"
  in_root "$d" "$layers/base-$base_key" -- /mnt/src/hack/image/setup.sh deps /mnt/src "$flavour"
  add_layer "base-$base_key" "deps-$flavour-$deps_key" "$d" "deps $flavour"
  log "deps layer in $((SECONDS - t0)) s"
fi
if ! have_tag "app-$flavour-$app_key"; then
  t0=$SECONDS; d=$layers/app-$flavour-$app_key; rm -rf "$d"
  in_root "$d" "$layers/deps-$flavour-$deps_key" "$layers/base-$base_key" -- /mnt/src/hack/image/setup.sh app /mnt/src
  add_layer "deps-$flavour-$deps_key" "app-$flavour-$app_key" "$d" app
  log "app layer in $((SECONDS - t0)) s"
fi
if ! have_tag "model-$flavour-$model_key"; then
  t0=$SECONDS; d=$layers/model-$flavour-$model_key; rm -rf "$d"
  in_root "$d" "$layers/app-$flavour-$app_key" "$layers/deps-$flavour-$deps_key" "$layers/base-$base_key" -- \
    /mnt/src/hack/image/setup.sh model "${model_arg[@]}"
  add_layer "app-$flavour-$app_key" "model-$flavour-$model_key" "$d" model
  log "model layer in $((SECONDS - t0)) s"
fi

# --- the configuration, from the Dockerfile's last stage, and the archive ----------------------
mapfile -t config < <(python3 "$here/image/dockerfile_config.py" "$root/Dockerfile")
final=$flavour-$( (echo "$model_key $ref"; printf '%s\n' "${config[@]}") | hash)
archive=$cache/zeroth-$final.oci.tar
if [ ! -f "$archive" ]; then
  "$umoci" config --image "$oci:model-$flavour-$model_key" --tag "$final" --no-history --clear=config.env \
    --clear=config.entrypoint --clear=config.cmd "${config[@]}" \
    --config.label "org.opencontainers.image.version=${ref##*:}" \
    --config.label "org.opencontainers.image.title=zeroth ($flavour)" \
    --manifest.annotation "org.opencontainers.image.ref.name=$ref"
  skopeo copy --quiet "oci:$oci:$final" "oci-archive:$archive.tmp:$ref" >&2
  mv "$archive.tmp" "$archive"
fi

# --- keep only this build's layers and tags of this flavour --------------------------------------
# (the other flavour's stay; the base they share has one key)
other=cuda; [ "$flavour" = cpu ] || other=cpu
for t in $("$umoci" list --layout "$oci"); do
  case "$t" in
    "base-$base_key"|"deps-$flavour-$deps_key"|"app-$flavour-$app_key"|"model-$flavour-$model_key"|"$final") ;;
    *-"$other"-*|"$other"-*) ;;
    *) "$umoci" rm --image "$oci:$t" ;;
  esac
done
"$umoci" gc --layout "$oci"
for d in "$layers"/*; do
  case "${d##*/}" in
    "base-$base_key"|"deps-$flavour-$deps_key"|"app-$flavour-$app_key"|"model-$flavour-$model_key") ;;
    *-"$other"-*) ;;
    *) rm -rf "$d" ;;
  esac
done
for a in "$cache"/zeroth-"$flavour"-*.oci.tar; do [ "$a" = "$archive" ] || rm -f "$a"; done
log "image $ref ($flavour): $(du -h "$archive" | cut -f1) archive, built in $((SECONDS - t_all)) s"
echo "$archive"
