# Zeroth: every set-up step lives here, and everything heavy is cached outside the repo in
# $(ZEROTH_CACHE) (default ~/.cache/zeroth), keyed by what it was built from.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ZEROTH_CACHE ?= $(HOME)/.cache/zeroth
export ZEROTH_CACHE
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(ZEROTH_CACHE)/uv-$(UV_VERSION)/bin/uv
export UV_CACHE_DIR := $(ZEROTH_CACHE)/uv-cache
LOCK_KEY := $(shell cat requirements.lock | sha256sum | cut -c1-12)
VENV := $(ZEROTH_CACHE)/venv-$(LOCK_KEY)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv model image image-name crd dashboards alerts cluster-build cluster-up cluster-down kueue-up kueue-down test test-unit test-integration lint run bench lock clean-cache

help:
	@echo "make run           a real RL run on this CPU (examples/countdown-tiny.yaml)"
	@echo "make test          every test: unit, integration (real control plane), e2e"
	@echo "make bench         benchmarks, each printing a side-by-side table"
	@echo "make cluster-up    start the local Kubernetes control plane (kwok nodes); cluster-down stops it"
	@echo "make kueue-up      start Kueue against it (queueName admission); kueue-down stops it"
	@echo "make crd           regenerate charts/zeroth/crds/ from zeroth/api.py"
	@echo "make dashboards    regenerate the chart's Grafana dashboards and README's metrics table from zeroth/metrics.py"
	@echo "make alerts        regenerate the chart's alert rules (charts/zeroth/files/alerts.yaml) from zeroth/alerts.py"
	@echo "make lock          re-resolve requirements.lock from pyproject.toml"
	@echo "make image         Zeroth's image, without a daemon (FLAVOUR=cpu|cuda); image-name prints its name"

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(ZEROTH_CACHE)/uv-$(UV_VERSION) uv==$(UV_VERSION)

# The environment is keyed by the lock; the project itself is an editable install of this checkout.
# Compiled to bytecode once here (uv then compiles all of site-packages): with PYTHONDONTWRITEBYTECODE
# set, as in many CI and container environments, Python would otherwise compile torch, transformers
# and deepspeed from source in every process a run starts, which doubles a short run's time on 2 cores
# (bench/startup.py).
$(VENV)/.synced-bytecode: requirements.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip sync --quiet --compile-bytecode requirements.lock
	rm -f $(VENV)/.editable  # sync removed the editable install of the project: `venv` puts it back
	touch $@

venv: $(VENV)/.synced-bytecode
	@if [ "$$(cat $(VENV)/.editable 2>/dev/null)" != "$(CURDIR)" ]; then \
	  VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet --no-deps -e . && echo "$(CURDIR)" > $(VENV)/.editable; fi

# The CPU example's base model (minutes, once per recipe): built before the tests, so no test's
# time limit pays for it.
model: venv
	$(PY) -m zeroth.trainer.build_model examples/countdown-tiny.yaml >/dev/null

# Zeroth's image (FLAVOUR cpu or cuda), as the Dockerfile builds it but without a daemon (root,
# mmdebstrap, chroot, umoci): prints the OCI archive it wrote (hack/build-image.sh says how).
FLAVOUR ?= cpu
IMAGE_NAME = $(PY) -c 'from zeroth import api; print({"cpu": api.DEFAULT_IMAGE, "cuda": api.CUDA_IMAGE}["$(FLAVOUR)"])'

image-name: venv
	@$(IMAGE_NAME)

image: venv model
	@UV=$(UV) ZEROTH_PY=$(PY) hack/build-image.sh $(FLAVOUR) "$$($(IMAGE_NAME))"

# requirements.lock: the tests' environment and the cpu image; requirements-cuda.lock: the cuda image (vLLM).
lock: | $(UV)
	$(UV) pip compile --quiet pyproject.toml --extra test --extra operator --extra engine --python $(PYTHON) --python-version 3.11 -o requirements.lock
	$(UV) pip compile --quiet pyproject.toml --extra operator --extra engine --extra vllm --python $(PYTHON) --python-version 3.11 -o requirements-cuda.lock

crd: venv
	$(PY) -m zeroth.crd > charts/zeroth/crds/reasoningruns.yaml

dashboards: venv
	$(PY) -m zeroth.dashboards
	$(PY) -m zeroth.metrics

alerts: venv
	$(PY) -m zeroth.alerts

cluster-build:
	hack/build-cluster.sh >/dev/null
	hack/build-node.sh >/dev/null
	hack/build-kueue.sh >/dev/null
	hack/build-prometheus.sh >/dev/null

cluster-up: cluster-build
	$(PYTHON) hack/cluster.py up
	@echo 'use it:  eval "$$($(PYTHON) hack/cluster.py env)"'

cluster-down:
	$(PYTHON) hack/cluster.py down

kueue-up: cluster-up
	$(PYTHON) hack/kueue.py up

kueue-down:
	$(PYTHON) hack/kueue.py down

# import-linter walks a package's own folder, and ours maps three folders into it: lint an
# installed copy, which has the real layout.
lint: venv
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && \
	  VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet --no-deps --target "$$site" . && \
	  cd "$$site" && PYTHONPATH="$$site" $(VENV)/bin/lint-imports --no-cache --config $(CURDIR)/pyproject.toml

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv cluster-build
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test: venv cluster-build model image lint
	$(PY) -m pytest tests --durations=25 $(PYTEST_ARGS)

run: venv
	$(VENV)/bin/zeroth run examples/countdown-tiny.yaml

bench: venv cluster-build
	$(PY) bench/validation.py
	$(PY) bench/logprob_memory.py

clean-cache:
	rm -rf $(ZEROTH_CACHE)
