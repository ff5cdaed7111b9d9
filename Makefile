# The two commands a new user needs: `make run` and `make test`.
# Both create the virtualenv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): TEST_WORKERS, one per core, and one more. `--dist loadgroup`: the
# tests of an xdist_group run on one worker, in order: each module that builds one cluster or
# trained model for all its tests (built once, not on each worker). `--aside-group=docker`: the
# Docker tier, which mostly waits on containers (a fifth of a core), runs first and alone on the
# extra worker, beside the others, which then joins them (tests/xdist_aside.py).
TEST_WORKERS ?= 2

.PHONY: run test lint typecheck unit venv clean browser prometheus

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Start the service locally: one controller and two trainers, embedded SQLite, no Docker.
run: $(STAMP)
	$(BIN)/cnn-swarm up --trainers 2

## The whole suite: lint, types, tests (the Docker tier runs when a Docker engine is reachable).
## One pytest session, every tier (Docker included; see above).
test: lint typecheck browser prometheus
	$(BIN)/pytest -n $$(($(TEST_WORKERS) + 1)) --dist loadgroup --aside-group=docker $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports  # the layers: contracts in pyproject.toml [tool.importlinter]

## Debian's chromium and chromium-driver for the browser tests (API docs, dashboard); installed
## when missing and we may (root), else those tests skip (under CI=true they fail instead).
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
		|| echo "chromium or chromium-driver is missing and cannot be installed here: the browser tests will skip"

## Debian's prometheus for the metrics e2e test (a real server scraping a real cluster); installed
## when missing and we may (root), else that test skips (under CI=true it fails instead).
prometheus:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; } \
		|| echo "prometheus is missing and cannot be installed here: the Prometheus e2e test will skip"

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .import_linter_cache
