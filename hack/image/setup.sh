#!/bin/sh
# The steps of Zeroth's image, run as root inside the image being built: by the Dockerfile (one RUN
# each) and by hack/build-image.sh (each in a chroot over the layers below), so that `docker build`
# and the daemonless `make image` produce the same layers.
#
#   setup.sh base                 after packages.txt is installed: the user, no docs or apt lists
#   setup.sh deps SRC FLAVOUR     the virtualenv from SRC's lock: requirements.lock (cpu) or
#                                 requirements-cuda.lock (cuda: the vllm extra)
#   setup.sh app SRC              Zeroth itself from the source tree SRC (a wheel, not editable)
#   setup.sh model [BUILT]        the built-in tiny base model; BUILT: a folder already built for
#                                 this recipe (make image passes its cache's), else built here
#
# uv must be on PATH (the Dockerfile mounts it, make image binds the cache's); UV_CACHE_DIR as given.
set -eu
VENV=/opt/zeroth/venv
MODELS=/opt/zeroth/cache   # the image's ZEROTH_CACHE: models/tiny-arith-<recipe key>
export UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy UV_NO_PROGRESS=1 VIRTUAL_ENV=$VENV

case "${1:-}" in
base)
  groupadd --gid 1000 zeroth
  useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin zeroth
  rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /var/lib/apt/lists/* /var/cache/apt/*.bin \
         /var/cache/debconf/*-old /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log
  ;;
deps)
  src=$2 flavour=$3
  case "$flavour" in
    cpu) lock=$src/requirements.lock ;;
    cuda) lock=$src/requirements-cuda.lock ;;
    *) echo "setup.sh: flavour must be cpu or cuda, got '$flavour'" >&2; exit 2 ;;
  esac
  [ -f "$lock" ] || { echo "setup.sh: $lock is missing (make lock writes both locks)" >&2; exit 2; }
  uv venv --quiet --python /usr/bin/python3 "$VENV"
  uv pip sync --quiet --compile-bytecode "$lock"
  ;;
app)
  uv pip install --quiet --no-deps --compile-bytecode "$2"
  ;;
model)
  dest=$(ZEROTH_CACHE=$MODELS "$VENV/bin/python" -c 'from zeroth.trainer import models; print(models.tiny_arith_location())')
  if [ -n "${2:-}" ]; then
    [ "$(basename "$2")" = "$(basename "$dest")" ] || {
      echo "setup.sh: $2 is not the model of this recipe ($(basename "$dest"))" >&2; exit 2; }
    mkdir -p "$(dirname "$dest")" && cp -r "$2" "$dest"
  else
    ZEROTH_CACHE=$MODELS "$VENV/bin/python" -c 'from zeroth.trainer import models; models.tiny_arith_path()'
  fi
  find "$MODELS" -name '.*.lock' -delete
  chmod -R a+rX "$MODELS"
  ;;
*)
  echo "usage: setup.sh base | deps SRC FLAVOUR | app SRC | model [BUILT]" >&2; exit 2 ;;
esac
