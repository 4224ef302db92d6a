# Developer entry points. `make test` is the project's single test command.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# examples/ and benchmarks/ may not exist yet; only hand existing paths to ruff.
LINT_PATHS := $(wildcard src tests examples benchmarks)
# Two pytest workers, one test file each at a time (module fixtures stay in one
# process). The suite is mostly waiting on servers and subprocesses, so two
# workers cut its time by about 40% on two cores. `make test PYTEST_ARGS=`
# runs it serially.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: install lint test run format

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The API and one worker process; Ctrl+C (or the API exiting) stops the worker too.
run: install
	DEBUG=$${DEBUG:-true} $(BIN)/app-kernel worker examples.service:app & worker=$$!; \
	trap 'kill -TERM $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	DEBUG=$${DEBUG:-true} $(BIN)/app-kernel serve examples.service:app --host 127.0.0.1 --port $${PORT:-8000}

format: install
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)
