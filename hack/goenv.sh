# Sourced by hack/ scripts: keeps Go's module and build caches inside Zeroth's cache.
ZEROTH_CACHE=${ZEROTH_CACHE:-$HOME/.cache/zeroth}
export GOMODCACHE=$ZEROTH_CACHE/go/mod
export GOCACHE=$ZEROTH_CACHE/go/build
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
