# email-router developer tasks. `make help` lists them.
#
#   make venv    create/update .venv (pip install -e '.[dev]'), only when pyproject.toml changed
#   make test    lint + type check + the whole test suite (what CI runs)
#   make lint    ruff check, ruff format --check, mypy
#   make demo    the router on this machine: Dovecot + Dataverse simulator + SMTP sink, no Docker
#   make bench   every benchmark script under tests/benchmarks/
#
# Variables: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# PYTEST_ARGS (extra pytest arguments), DEMO_ARGS (e.g. DEMO_ARGS="--duration 60").

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv test lint demo bench compose-config clean

help:
	@sed -n 's/^#   make /make /p' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# the README's test command, with the venv's tools first on PATH
test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" sh -c 'ruff check . && ruff format --check . && mypy && pytest $(PYTEST_ARGS)'

demo: venv
	$(BIN)/python deploy/demo/demo.py $(DEMO_ARGS)

bench: venv
	@set -e; found=0; \
	for script in tests/benchmarks/bench_*.py; do \
	  [ -e "$$script" ] || continue; found=1; \
	  echo "== $$script"; \
	  $(BIN)/python "$$script"; \
	done; \
	[ $$found = 1 ] || echo "no benchmark scripts in tests/benchmarks/"

# check docker-compose.yml (needs the docker compose plugin, not a running engine)
compose-config:
	@test -f .env || cp .env.example .env.compose-check
	docker compose --env-file $$( [ -f .env ] && echo .env || echo .env.compose-check ) config --quiet
	@rm -f .env.compose-check

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
