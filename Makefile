# trio-infer: every target installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PORT ?= 8001
# The CPU build of torch, used where no NVIDIA GPU is present (a plain `torch` requirement pulls a multi-GB CUDA build).
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install install-dev start-inference test soak lint bench system-deps build up down clean

# `install`: only what serving needs. `install-dev` adds the test and lint tooling ([dev] extra).
install: $(STAMP)

install-dev: $(DEV_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: torch comes from the project requirements (CUDA build)"; \
	elif ! $(PY) -c 'import torch' 2>/dev/null; then \
		echo "no GPU: installing the CPU build of torch"; \
		$(PY) -m pip install "$(TORCH_CPU_SPEC)" || $(PY) -m pip install torch --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PY) -m pip install -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -e '.[dev]'
	touch $(DEV_STAMP)

start-inference: install
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-$$( [ -z "$$MODEL_NAME" ] && echo 1 || echo 0 )} \
		$(VENV)/bin/trio-infer --port $(PORT)

# Debian packages the test suite drives for real (Prometheus for the monitoring tests).
system-deps:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
		else echo "prometheus/promtool missing: install the Debian package 'prometheus'"; fi; }

test: install-dev system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Latency, RSS and throughput figures on the real clock: meaningful on a quiet machine only, so neither
# `make test` nor CI runs them (pyproject's addopts deselect the `soak` marker; `-m soak` selects them).
soak: install-dev system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m soak -s

lint: install-dev
	$(PY) -m ruff check trio_infer tests bench
	$(PY) -m ruff format --check trio_infer tests bench
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

bench: install-dev
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	HF_HUB_OFFLINE=1 $(PY) -m bench

build:
	docker compose build

up:
	docker compose up -d

down:
	docker compose down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
