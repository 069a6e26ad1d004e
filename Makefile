# The two fresh-machine commands (README): `make demo` and `make test`.
# Each creates the project's own virtual environment (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/dagster_home

.PHONY: setup demo test dev daemon clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

## The main job on the embedded local default: backfill the seed's whole source range.
demo: setup
	$(BIN)/backfill-platform backfill --from 2024-01-01 --to 2025-11-20

## The test suite (what CI runs).
test: setup
	$(BIN)/python -m pytest

## The Dagster UI and daemon on http://127.0.0.1:3000
dev: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf .data dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
