# Two commands for a newcomer: `make run` (the whole system on local defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
WORKERS ?= 1
PYTEST_ARGS ?=
# pytest-xdist processes for `make test`, each with servers of its own (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 3

.PHONY: install run test test-compose lint format clean bench bench-quick bench-hostile bench-formats \
	bench-sidebyside bench-sidebyside-large bench-priorities bench-httpx-pool

# The venv is rebuilt only when a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-core.txt requirements-api.txt requirements-worker.txt \
		requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## run: start PostgreSQL, NATS, migrations, the API on :$(PORT) and a worker; Ctrl-C stops all
## (settings come from .secrets.toml or the environment: `make run API_PROCESSES=2` serves the API
## from two processes)
run: install
	$(PY) -m devstack --port $(PORT) --workers $(WORKERS)

## test: the whole suite on throwaway PostgreSQL and NATS servers it starts itself, in $(TEST_WORKERS)
## processes (most of a test's time is spent waiting on servers, so 3 fit 2 cores); a file at a time
## per process, so a module's fixtures are made once
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## test-compose: the Compose files run for real under Docker (installed and started if absent, as root),
## base images built locally when they cannot be pulled; 3-5 min, ends with `down -v`
test-compose: install
	PYTHON=$(PY) bash deploy/docker-host.sh
	bash deploy/local-images.sh
	$(PY) -m deploy.compose_check

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The benchmark tools (charts, profilers) on top of the dev venv, only when a benchmark is run.
$(VENV)/.bench-installed: $(VENV)/.installed requirements-bench.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

## bench: every scenario, several times, on throwaway servers (about 20 min); results in bench/results
bench: $(VENV)/.bench-installed
	$(PY) -m bench.suite

## bench-quick: a two-minute subset of `make bench` (results as bench/results/<date>-quick.*)
bench-quick: $(VENV)/.bench-installed
	$(PY) -m bench.suite --quick

## bench-hostile: `make bench`'s hostile-traffic scenario alone (about 2.5 min; bench/results/<date>-hostile.*)
bench-hostile: $(VENV)/.bench-installed
	$(PY) -m bench.hostile

## bench-formats: 12 MP HEIC, AVIF and TIFF through `thumbnail` and `web` beside the naive way, per core,
## with peak RSS, and a 24 MP HEIC thumbnail (about 5 min; prints a table for BENCHMARKS.md)
bench-formats: $(VENV)/.bench-installed
	$(PY) -m bench.input_formats

## bench-sidebyside: ours beside the original design (../shared/original) with httpx, requests, aiohttp and
## the raw generator, 3 interleaved runs, medians (about 20 min; bench/results/<date>-sidebyside.*)
bench-sidebyside: $(VENV)/.bench-installed
	$(PY) -m bench.sidebyside

## bench-httpx-pool: httpx's AsyncClient at 16 and 64 connections against a bare endpoint, stock pool, a pool
## that hands no connection twice, one client per task (about 2 min; issue 20's c64 cliff without us)
bench-httpx-pool: $(VENV)/.bench-installed
	$(PY) -m bench.httpx_pool

## bench-sidebyside-large: the 12 MP rows of bench-sidebyside alone (60 photos a run, 3 runs, about 5 min)
bench-sidebyside-large: $(VENV)/.bench-installed
	$(PY) -m bench.sidebyside --only large

## bench-priorities: an interactive upload behind 5,000 queued bulk tasks, and one key's upload behind
## another key's 10,000, against idle (a few minutes; prints p50/p95 for BENCHMARKS.md)
bench-priorities: $(VENV)/.bench-installed
	$(PY) -m bench.priorities

## clean: remove the local servers' data (.devdata) and runtime files; keeps the venv
clean:
	rm -rf .devdata
	find uploads processed -mindepth 1 ! -name .gitkeep -delete
