# embedpipe: `make demo` runs the pipeline offline on the embedded sample, `make test` runs the tests.
# Everything installs into .venv at the repository root.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: a looser requirement would pull a multi-GB CUDA build where a CPU wheel will do
TORCH ?= torch==2.13.0
export EMBEDPIPE_HOME ?= $(CURDIR)/work
export PREFECT_HOME ?= $(EMBEDPIPE_HOME)/prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test test-fast lint server bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m flows.demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# the Prefect UI on http://127.0.0.1:4200, over the same database the demo and the CLI write to
server: install
	mkdir -p $(PREFECT_HOME)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf work
