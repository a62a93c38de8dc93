# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install dev clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast]'

dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

run: install
	$(BIN)/reliq all

lint: dev
	$(BIN)/ruff check reliq tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# Benchmarks (minutes; writes bench/RESULTS.md). The peers are installed into
# bench/.venv-peers/, never into .venv. Run on a quiet machine.
bench: dev
	$(BIN)/python bench/peers/run.py
	$(BIN)/python bench/api_vs_refs.py
	$(BIN)/python bench/costs.py
	$(BIN)/python bench/targets.py
	$(BIN)/python bench/instructions.py

clean:
	rm -rf $(VENV) .reliq .pytest_cache .mypy_cache .ruff_cache
