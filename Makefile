# jobsvc: `make run` starts the service (SQLite, demo tasks); `make test` installs and tests.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BIND ?= 127.0.0.1:3000
DB ?= sqlite:///jobsvc.db
PYTEST_ARGS ?=

.PHONY: help install run test test-fast pg bench lint clean

help:
	@echo "make run    start jobsvc on http://$(BIND) (SQLite $(DB), demo tasks)"
	@echo "make test   create/update the virtualenv and run the whole suite with coverage"
	@echo "make lint   ruff and mypy --strict"
	@echo "make bench  run the benchmarks: bench/RESULTS.md, bench/results-postgres.json"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,postgres,lint]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	exec $(BIN)/jobsvc serve --bind $(BIND) --db $(DB) --tasks jobsvc.demo

# The PostgreSQL tests need the local server (127.0.0.1:5432, trust auth); start it if down.
pg:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; echo "PostgreSQL did not come up" >&2; exit 1

# PG_TEST_ALLOW_RESTART=1: `make test` also runs the test that restarts the local PostgreSQL
# mid-run (a plain `pytest` skips it, so it never surprises someone else using the server).
test: $(STAMP) pg
	rm -f .coverage .coverage.*
	PG_TEST_ALLOW_RESTART=1 $(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not e2e and not postgres' -q $(PYTEST_ARGS)

bench: $(STAMP) pg
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_pg.py --json bench/results-postgres.json

lint: $(STAMP)
	$(BIN)/ruff check jobsvc tests bench
	$(BIN)/mypy jobsvc

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .hypothesis *.egg-info
