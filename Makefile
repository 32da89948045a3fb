# email-router developer tasks. `make help` lists them.
#
#   make venv    create/update .venv (pip install -e '.[dev]' at the versions of constraints/dev.txt)
#   make test    lint + type check + import layers + the whole test suite (what CI runs)
#   make lint    ruff check, ruff format --check, mypy, lint-imports (pyproject's contracts)
#   make demo    the router on this machine: Dovecot + Dataverse simulator + SMTP sink, no Docker
#   make bench   every benchmark script under tests/benchmarks/
#   make fuzz    fuzz the MIME parser, the address parsers and the XML loader, FUZZ_SECONDS each
#
# Variables: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# PYTEST_ARGS (extra pytest arguments), DEMO_ARGS (e.g. DEMO_ARGS="--duration 60"),
# FUZZ_SECONDS (budget of each fuzz target, default 60).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# exact versions of every development and runtime package (see its header to update it)
CONSTRAINTS := constraints/dev.txt
PYTEST_ARGS ?=
DEMO_ARGS ?=
FUZZ_SECONDS ?= 60

.DEFAULT_GOAL := help
.PHONY: help venv test lint demo bench fuzz compose-config clean

help:
	@sed -n 's/^#   make /make /p' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# re-run when pyproject.toml or the pins change
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# the README's test command, with the venv's tools first on PATH
test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" sh -c 'ruff check . && ruff format --check . && mypy && lint-imports && pytest $(PYTEST_ARGS)'

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

# atheris + libFuzzer (tests/fuzz/run.py), each target from the seeds of tests/fuzz/seeds.py;
# exit 1 on any finding, whose input is kept in benchmark-results/fuzz/<target>/
fuzz: venv
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

# check docker-compose.yml (needs the docker compose plugin, not a running engine)
compose-config:
	@test -f .env || cp .env.example .env.compose-check
	docker compose --env-file $$( [ -f .env ] && echo .env || echo .env.compose-check ) config --quiet
	@rm -f .env.compose-check

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
