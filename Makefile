# The MNIST training pipeline. `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A folder holding the MNIST files (IDX .gz or mnist.npz). Unset: the Keras cache, downloading
# on first use. A sibling shared/data/mnist checkout is used when it exists.
DATA_DIR ?= $(firstword $(wildcard ../shared/data/mnist))
ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 5000
STORE ?= mlruns
SERVER_DIR ?= .server
AUTH ?= 0
ALLOWED_HOSTS ?=
# Keras's backend for `make train` (and GPU=1's CUDA build): tensorflow or jax. Both are installed.
BACKEND ?= tensorflow
GPU ?=
ifeq ($(filter tensorflow jax,$(BACKEND)),)
$(error BACKEND=$(BACKEND) is not offered: use BACKEND=tensorflow or BACKEND=jax)
endif
comma := ,
EXTRAS := dev$(if $(GPU),$(comma)cuda-$(BACKEND))

.DEFAULT_GOAL := help
.PHONY: help install train test test-slow test-full test-browser test-cluster bench bench-gpu lint format \
	typecheck check ui serve server server-stop migrate slurm-up slurm-down clean

help: ## List every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: DATA_DIR=$(DATA_DIR) ARGS='overrides' HOST=$(HOST) PORT=$(PORT)"

INSTALLED := $(VENV)/.installed$(if $(GPU),-cuda-$(BACKEND))
install: $(INSTALLED) ## Create the virtualenv, install the project, both backends, dev tools (GPU=1: CUDA for BACKEND)

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# compat: the project's folder on sys.path, where Hydra's plugin scan finds hydra_plugins/
	$(BIN)/python -m pip install --quiet -c constraints.txt --config-settings editable_mode=compat -e '.[$(EXTRAS)]'
	touch $@

train: install ## Train with the defaults (add overrides with ARGS='optimizer=sgd ...', BACKEND=jax)
	$(BIN)/python -m src.train $(if $(filter command line,$(origin BACKEND)),backend=$(BACKEND)) \
		$(if $(DATA_DIR),data.dir=$(DATA_DIR)) $(ARGS)

TEST_WORKERS ?= 2
test: install ## Run the test suite (fixture data, temporary stores; no network) on TEST_WORKERS workers
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

test-slow: install ## Run the slow tests: real servers, signals, killed processes, parallel and Optuna sweeps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m slow

test-browser: install ## Render MLflow's UI in headless Chromium (apt-installs chromium and its driver if missing)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	$(BIN)/python -m pytest -m browser

test-cluster: install ## PostgreSQL, the team server and a one-node SLURM for real (as root; apt-installs SLURM)
	$(BIN)/python -m pytest -m cluster

test-full: install ## Train the default run on the full MNIST in DATA_DIR and require 98% test accuracy
	@test -n "$(DATA_DIR)" || { echo "error: set DATA_DIR=folder with the full MNIST files" >&2; exit 2; }
	MNIST_FULL_DIR=$(abspath $(DATA_DIR)) $(BIN)/python -m pytest -m full -s

REFERENCE ?= ../shared/anchors/seed_keras.py
bench: install ## Benchmarks side by side with the plain program (DATA_DIR, REFERENCE); not part of test
	@test -n "$(DATA_DIR)" || { echo "error: set DATA_DIR=folder with the full MNIST files" >&2; exit 2; }
	$(BIN)/python benchmarks/bench.py --data-dir $(DATA_DIR) --reference $(REFERENCE) $(BENCH_ARGS)

# bench-gpu runs with PYTHON if given on the command line (an interpreter with the project's
# dependencies, made without make install), else with the project's environment.
BENCH_PYTHON = $(if $(filter command line,$(origin PYTHON)),$(PYTHON),$(BIN)/python)
bench-gpu: $(if $(filter command line,$(origin PYTHON)),,install) ## On a CUDA machine: each backend's default and fast runs, tracked and dry, and the plain program (PYTHON=, DATA_DIR)
	@test -n "$(DATA_DIR)" || { echo "error: set DATA_DIR=folder with the full MNIST files" >&2; exit 2; }
	$(BENCH_PYTHON) benchmarks/gpu.py --data-dir $(DATA_DIR) $(BENCH_ARGS)

lint: install ## Check style with ruff
	$(BIN)/ruff check src hydra_plugins tests benchmarks
	$(BIN)/ruff format --check src hydra_plugins tests benchmarks

format: install ## Format and fix with ruff
	$(BIN)/ruff format src hydra_plugins tests benchmarks
	$(BIN)/ruff check --fix src hydra_plugins tests benchmarks

typecheck: install ## Type-check the package with mypy
	$(BIN)/mypy

check: lint typecheck test test-slow ## Lint, type-check and run every test but the full-MNIST one

STORE_URI = sqlite:///$(abspath $(STORE))/mlflow.db
ui: install ## Serve the project's MLflow store at http://$(HOST):$(PORT), opening on the runs table
	$(BIN)/python -m src.tracking --tracking-uri $(STORE_URI) --ui http://$(HOST):$(PORT)
	$(BIN)/mlflow ui --backend-store-uri $(STORE_URI) \
		--default-artifact-root $(abspath $(STORE))/artifacts --host $(HOST) --port $(PORT)

MODEL ?= models:/mnist-cnn@best
SERVE_PORT = $(if $(filter command line environment,$(origin PORT)),$(PORT),5001)
serve: install ## Serve MODEL (default: the registered best) for predictions on 127.0.0.1:PORT (5001)
	$(BIN)/python -m src.tracking --tracking-uri $(STORE_URI) --model $(MODEL) >/dev/null
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI=$(STORE_URI) $(BIN)/mlflow models serve \
		--model-uri $(MODEL) --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

server: install ## Start the team tracking server: PostgreSQL and mlflow server in SERVER_DIR, on HOST:PORT (AUTH=1: basic auth)
	SERVER_DIR=$(SERVER_DIR) HOST=$(HOST) PORT=$(PORT) AUTH=$(AUTH) ALLOWED_HOSTS=$(ALLOWED_HOSTS) \
		MLFLOW=$(abspath $(BIN))/mlflow scripts/server.sh start

server-stop: ## Stop the team tracking server; its runs stay in SERVER_DIR for the next start
	SERVER_DIR=$(SERVER_DIR) scripts/server.sh stop

migrate: install ## Copy the runs of the project's store (STORE) into the team server at HOST:PORT
	$(BIN)/python -m src.migrate --from $(STORE_URI) --to http://$(HOST):$(PORT)

slurm-up: ## Start a one-node SLURM cluster on this machine (as root; apt-installs munge and SLURM)
	scripts/slurm.sh up

slurm-down: ## Stop the one-node SLURM cluster
	scripts/slurm.sh down

clean: ## Remove caches and Hydra outputs (never the recorded runs in mlruns/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache outputs multirun build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
