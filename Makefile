# The front door: `make demo` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean help

help:
	@echo "make demo   simulator -> etl sync -> ./demo.db (SQLite), then etl status"
	@echo "make test   the whole test suite (PostgreSQL/MariaDB tests skip if no server)"
	@echo "make lint   ruff and mypy"
	@echo "make bench  throughput benchmarks, request budgets and the loader's own cost per call"

# Runtime install: what a user of the demo needs.
$(BIN)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Development install: the tests' and linters' dependencies too.
$(BIN)/.dev: pyproject.toml $(BIN)/.runtime
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.runtime
	@BIN=$(BIN) bash scripts/demo.sh

test: $(BIN)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.dev
	$(BIN)/ruff check etl migrations tests
	$(BIN)/mypy

bench: $(BIN)/.dev
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "dlt could not be installed; its rows will say so"
	$(BIN)/python scripts/bench.py
	$(BIN)/python scripts/bench_dynamics.py
	$(BIN)/python scripts/bench_ratelimit.py
	$(BIN)/python scripts/bench_spacing.py
	$(BIN)/python scripts/bench_loader.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f demo.db demo.db-wal demo.db-shm demo.toml
	rm -rf demo.db.locks
