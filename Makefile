# jobsvc: `make run` starts the service (SQLite, demo tasks); `make test` installs and tests.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BIND ?= 127.0.0.1:3000
DB ?= sqlite:///jobsvc.db
PYTEST_ARGS ?=

FAULTS_SCALE ?= full
FAULTS_REPORT ?= tests/faults/REPORT.md

.PHONY: help install run test test-fast pg bench lint clean faults

help:
	@echo "make run    start jobsvc on http://$(BIND) (SQLite $(DB), demo tasks)"
	@echo "make test   create/update the virtualenv and run the whole suite with coverage"
	@echo "make lint   ruff and mypy --strict"
	@echo "make bench  run the benchmarks: bench/RESULTS.md, bench/results-postgres.json"
	@echo "make faults run the fault campaign (FAULTS_SCALE=full|medium|short): tests/faults/REPORT.md"

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

# The fault campaign (tests/faults): real jobsvc processes killed, starved of disk, of their
# database file, of PostgreSQL (a throwaway cluster of its own, never the shared server), of
# descriptors, and fed misbehaving handlers. Needs root for the tmpfs and chattr scenarios
# (they are skipped otherwise) and PostgreSQL's server binaries (installed here if missing).
# Writes $(FAULTS_REPORT) and prints it; exits non-zero if any scenario failed.
faults: $(STAMP)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_config >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q postgresql; } || \
		echo "warning: no PostgreSQL server binaries (initdb); scenario 4 will fail" >&2
	FAULTS_SCALE=$(FAULTS_SCALE) FAULTS_REPORT=$(FAULTS_REPORT) $(BIN)/python -m pytest tests/faults -m faults -p no:cacheprovider -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check jobsvc tests bench
	$(BIN)/mypy jobsvc

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .hypothesis *.egg-info
