# make demo  - create .venv, install, run the retrain flow on the bundled data (a few minutes)
# make test  - create/refresh .venv, lint, run the whole test suite
# make test-fast - lint and the unit tier alone (no integration test): under 3 minutes on 2 cores
# make test-gguf - llama.cpp loads our GGUF exports (compiles llama-cpp-python once: many minutes)
# make bench - benchmarks (~25 min on 2 idle cores; BENCH_QUICK=1: a 2-min smoke run), writes
#              benchmarks/RESULTS.md
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# No telemetry from MLflow or Prefect (this also keeps runs quiet on machines without internet).
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install postgres demo test test-fast test-gguf lint format clean bench gpu-check

# torch first and pinned, through pip: an unpinned torch pulls a multi-GB CUDA build, and pip
# finds the CPU wheel where the machine keeps one. constraints.txt is the lock of every other
# package, so a fresh machine resolves the same versions; uv installs them (the same set as
# pip: ~35 s instead of ~2 min here) and keeps the torch already installed. Bytecode is compiled
# at install, as pip does: where PYTHONDONTWRITEBYTECODE is set, nothing would cache it later.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 uv==0.13.9
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/tuneforge run deployments/presets/tiny-cpu.yaml

# The stack tests (tests/stack, tests/deployments) start PostgreSQL in a temporary folder.
postgres:
	tools/ensure_postgres.sh

test: install lint postgres
	$(BIN)/pytest

# Unit tests call plain functions and tasks' .fn(); the integration tier (real flows against
# real Prefect and MLflow servers, -m integration) is what this leaves out.
test-fast: install lint
	$(BIN)/pytest -m "not integration"

# llama.cpp itself reading tuneforge's GGUF exports. llama-cpp-python is source-only on PyPI:
# the first install compiles llama.cpp (cmake and a C++ compiler needed), so it stays out of
# the dev install; without it `make test` skips this test and says so.
$(VENV)/.llama-cpp-stamp: $(STAMP)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt llama-cpp-python
	touch $@

test-gguf: $(VENV)/.llama-cpp-stamp
	$(BIN)/python -c "import llama_cpp"
	HF_HUB_OFFLINE=1 $(BIN)/pytest tests/exports/test_gguf.py -k llama_cpp_answers -s

# The bench extra (trl) on top of the dev install; each suite waits for an idle machine first.
$(VENV)/.bench-stamp: $(STAMP)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e ".[dev,bench]"
	touch $@

bench: $(VENV)/.bench-stamp
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.run

# On a GPU machine: full, LoRA, QLoRA at the 0.5B shape against the Trainer and TRL (a CPU
# smoke run elsewhere); paste its table into benchmarks/RESULTS.md.
gpu-check: $(VENV)/.bench-stamp
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.gpu

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/lint_imports.py

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	# mlflow.db goes with mlruns/: a registry whose artifacts are gone points at nothing.
	rm -rf $(VENV) runs mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache
