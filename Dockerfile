# syntax=docker/dockerfile:1.7
# Zeroth's image: the operator, the trainer and the rollout workers, run as uid 1000 under a
# read-only root filesystem. Two flavours from one recipe:
#
#   docker build -t "$(make -s image-name)" .                                    # cpu (the default)
#   docker build --build-arg FLAVOUR=cuda -t "$(make -s image-name)-cuda" .      # GPU nodes, with vLLM
#
# Podman builds it as it is. Every step is hack/image/setup.sh, which `make image` also runs (in a
# chroot, without a daemon), so both builds make the same layers: base, dependencies, Zeroth, model.
# The dependencies come from the lock (requirements.lock, or requirements-cuda.lock for cuda), never
# re-resolved. torch from PyPI is the CUDA build in both flavours (its CUDA libraries load only on a
# GPU); the cuda flavour adds vLLM. The host's NVIDIA driver comes in through the container toolkit.
ARG DEBIAN=debian:bookworm-slim
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${DEBIAN}
ARG FLAVOUR=cpu
RUN --mount=type=bind,source=hack/image,target=/build \
    apt-get update && \
    apt-get install -y --no-install-recommends $(grep -v '^#' /build/packages.txt) && \
    /build/setup.sh base
RUN --mount=type=bind,source=.,target=/src,rw --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=cache,target=/root/.cache/uv \
    /src/hack/image/setup.sh deps /src "$FLAVOUR"
RUN --mount=type=bind,source=.,target=/src,rw --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=cache,target=/root/.cache/uv \
    /src/hack/image/setup.sh app /src
RUN --mount=type=bind,source=hack/image,target=/build \
    /build/setup.sh model

# hack/build-image.sh sets the same configuration (a test compares the built image's with these lines).
ENV PATH=/opt/zeroth/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV ZEROTH_CACHE=/opt/zeroth/cache
ENV HOME=/tmp
ENV PYTHONUNBUFFERED=1
ENV PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["zeroth", "--help"]
