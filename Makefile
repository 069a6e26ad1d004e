# The two fresh-machine commands (README): `make demo` and `make test`.
# Each creates the project's own virtual environment (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/dagster_home

.PHONY: setup demo test test-fast lint dev daemon clean bench bench-quick chromium postgresql

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

setup: $(VENV)/.installed

## The main job on the embedded local default: backfill the seed's whole source range.
demo: setup
	$(BIN)/backfill-platform backfill --from 2024-01-01 --to 2025-11-20

## Debian's Chromium for the UI test (Playwright's own browser download is not reachable here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## Debian's PostgreSQL server for the Postgres instance-storage tests (docs/team.md): each test starts its
## own throwaway server on 127.0.0.1 from these binaries (initdb is in /usr/lib/postgresql/<version>/bin).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

## The linter (ruff, configured in pyproject.toml).
lint: setup
	$(BIN)/ruff check .

## The test files run in 2 parallel pytest processes (pytest-xdist, --dist loadfile: a file's tests stay in
## one process, so its module fixtures are set up once). One after another (TEST_WORKERS=1) they took
## 5,167 s here on 3 Dec 2026, and CI stopped such a run at its 5,400 s (README, "Tests").
TEST_WORKERS ?= 2
ifeq ($(TEST_WORKERS),1)
PYTEST_PARALLEL :=
else
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile
endif

## The test suite (what CI runs): the linter, then every test.
test: setup chromium postgresql lint
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

## The fast tier for your own loop: no daemon, webserver, emulator, Spark Connect server or browser
## (tests marked `slow` are skipped; real local Spark and Delta still run).
test-fast: setup lint
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

## The Dagster UI on http://127.0.0.1:3000, with the instance's one daemon (started only if none runs)
dev: setup
	$(BIN)/backfill-platform dev --port 3000

## Benchmark per-date vs chunked backfills through a real instance + daemon (docs/benchmark.md);
## writes bench/results.json and bench/results.png. Tens of minutes on a 2-core machine.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py

## The same with a handful of dates (what CI's smoke test runs; a few minutes).
bench-quick: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py --quick

clean:
	-$(BIN)/backfill-platform spark-server --stop
	rm -rf .data bench/.work dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
