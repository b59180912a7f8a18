# Two commands for a newcomer: `make run` (the whole system on local defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
WORKERS ?= 1
PYTEST_ARGS ?=

.PHONY: install run test lint format clean

# The venv is rebuilt only when a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## run: start PostgreSQL, NATS, migrations, the API on :$(PORT) and a worker; Ctrl-C stops all
run: install
	$(PY) -m devstack --port $(PORT) --workers $(WORKERS)

## test: the whole suite on throwaway PostgreSQL and NATS servers it starts itself
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

## clean: remove the local servers' data (.devdata) and runtime files; keeps the venv
clean:
	rm -rf .devdata
	find uploads processed -mindepth 1 ! -name .gitkeep -delete
