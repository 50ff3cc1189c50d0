# jobsvc: `make run` starts the service (SQLite, demo tasks); `make test` installs and tests.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BIND ?= 127.0.0.1:3000
DB ?= sqlite:///jobsvc.db
PYTEST_ARGS ?=
# `make run` installs only what running needs (plus the PostgreSQL driver for a postgresql:// DB);
# `make test` installs the test, lint and postgres extras too.
RUN_EXTRAS := $(if $(filter postgres%,$(DB)),[postgres])
RUN_STAMP := $(VENV)/.run-stamp$(if $(RUN_EXTRAS),-postgres)
STAMP := $(VENV)/.installed-stamp

FAULTS_SCALE ?= full
FAULTS_REPORT ?= tests/faults/REPORT.md

.PHONY: help install run test test-fast tools pg bench lint clean faults screenshots

help:
	@echo "make run    start jobsvc on http://$(BIND) (SQLite $(DB), demo tasks); Ctrl-C drains and stops it"
	@echo "make test   create/update the virtualenv, install the test tools, run the whole suite with coverage"
	@echo "make lint   ruff and mypy --strict"
	@echo "make tools  install what the tests run when missing: promtool, docker-compose, chromium (Debian, needs root)"
	@echo "make screenshots  run the dashboard's browser test and copy its screenshots to docs/img/"
	@echo "make bench  run the benchmarks: bench/RESULTS.md, bench/results-postgres.json"
	@echo "make faults run the fault campaign (FAULTS_SCALE=full|medium|short): tests/faults/REPORT.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e '.$(RUN_EXTRAS)'
	touch $@

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,postgres,lint]'
	touch $@

install: $(STAMP)

# `exec`: jobsvc replaces the recipe's shell, so Ctrl-C (SIGINT) and a SIGTERM to make (which
# make passes on) reach jobsvc itself: it drains and exits 0 (make then reports the interrupt).
run: $(RUN_STAMP)
	exec $(BIN)/jobsvc serve --bind $(BIND) --db $(DB) --tasks jobsvc.demo

# promtool (from Debian's prometheus package) and docker-compose for tests/deploy, chromium
# (Debian's) for the dashboard's browser test; hadolint and playwright (the Python package
# only: never `playwright install`) come with the test extra. The tests install nothing:
# they fail, naming this target.
tools: $(STAMP)
	@.ci/install-tools $(BIN)

# The PostgreSQL tests use PG_TEST_URL if set (the local server is then neither started nor
# needed), else the local server (127.0.0.1:5432, trust auth), started here if it is down.
pg:
ifdef PG_TEST_URL
	@echo "PG_TEST_URL is set: the PostgreSQL tests use it; the local server is left alone"
else
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; echo "PostgreSQL did not come up" >&2; exit 1
endif

test: $(STAMP) tools pg
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not e2e and not postgres and not deploy' -q $(PYTEST_ARGS)

# The dashboard's pages photographed by tests/ui/test_browser.py (also in tests/artifacts/ui/).
screenshots: $(STAMP) tools
	UI_SCREENSHOTS_DIR=docs/img $(BIN)/python -m pytest tests/ui/test_browser.py -q $(PYTEST_ARGS)

# jobsvc beside dramatiq, arq (Redis) and procrastinate (PostgreSQL) (bench/peers.py), the
# engine's scenarios at 1,000,000 jobs (bench/engine.py), both included in bench/RESULTS.md;
# then the PostgreSQL store's own (bench/RESULTS-postgres.md). About 40 minutes on 2 cores.
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP) pg
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk >/dev/null; } || { echo "bench/peers.py needs wrk (Debian's wrk package)" >&2; exit 1; }
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || { echo "bench/peers.py needs Redis on 127.0.0.1:6379" >&2; exit 1; }
	@# bytecode for jobsvc's modules, as a pip install writes it (this machine sets PYTHONDONTWRITEBYTECODE,
	@# so an editable install would compile them at every start: about 0.1 s of each jobsvc serve's start-up)
	$(BIN)/python -m compileall -q jobsvc bench
	$(BIN)/python bench/peers.py --md bench/.peers.md --json bench/results-peers.json
	$(BIN)/python bench/engine.py --md bench/.engine.md --json bench/results-engine.json
	$(BIN)/python bench/run.py --append bench/.peers.md --append bench/.engine.md
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
