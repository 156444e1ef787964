# The two set-up commands: `make demo` (embedded default, core dependencies only) and
# `make test` (the whole test suite). Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint bench check clean mutate

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

# Mutation testing (mutmut, in a scratch copy): the engine, codecs, policies and SQL
# identifier checks. Hours on two cores; ARGS narrows it, e.g.
# make mutate ARGS="--only src/sophia_memory/engine/ordering.py --tests tests/test_planted_behaviours.py"
mutate: .stamp-dev
	$(PIP) 'mutmut>=3.8'
	$(BIN)/python tests/mutants/mutate.py --report docs/mutation-run.md $(ARGS)

bench: .stamp-dev
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/bench_load.py

check: test lint

clean:
	rm -rf $(VENV) .stamp-core .stamp-dev
