# The two set-up commands: `make demo` (embedded default, core dependencies only) and
# `make test` (the whole test suite). Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint bench check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

.stamp-core: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

.stamp-dev: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	touch $@ .stamp-core

demo: .stamp-core
	$(BIN)/sophia-memory demo

test: .stamp-dev
	$(BIN)/python -m pytest -q

lint: .stamp-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy

bench: .stamp-dev
	$(BIN)/python benchmarks/run.py

check: test lint

clean:
	rm -rf $(VENV) .stamp-core .stamp-dev
