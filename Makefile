# The commands a newcomer needs; the README shows the same ones.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.installed-bench-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install tools test lint dev bench migrate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## What the tests drive besides Python: Debian's chromium for the dashboard's browser test (Playwright's own
## browser download is not used), and promtool from Debian's prometheus package for the alert rules' checks and
## unit tests (the package's postinst may complain that systemd is not running; promtool is in place all the same).
## Installed with apt-get when this runs as root; otherwise it says what to run.
tools:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make tools: installing chromium"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; \
	  else \
	    echo "make test: chromium is missing: run \`sudo apt-get install chromium\`" >&2; exit 1; \
	  fi; \
	fi
	@if [ ! -x /usr/bin/promtool ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make tools: installing prometheus (for promtool)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null || true; \
	    test -x /usr/bin/promtool || { echo "make tools: promtool is still missing after installing prometheus" >&2; exit 1; }; \
	  else \
	    echo "make test: promtool is missing: run \`sudo apt-get install prometheus\`" >&2; exit 1; \
	  fi; \
	fi

## Runs the whole test suite against the local PostgreSQL and RabbitMQ, two tests at a time: most of the wall
## time is spent waiting on processes, brokers and timeouts, and every test has its own database and names.
## tests/conftest.py stops at once, naming the install command, if another program the tests drive is missing.
test: $(STAMP) tools
	$(BIN)/pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Every role in one process, migrations applied, over an embedded PostgreSQL (no DATABASE_URL or AMQP_URL needed:
## see README); the dashboard and the API on 127.0.0.1:8000.
dev: $(STAMP)
	$(BIN)/taskmill dev

migrate: $(STAMP)
	$(BIN)/taskmill migrate

## The `bench` extra: Celery, pgqueuer and psycopg, the reference systems bench/references/ runs beside taskmill.
## Its own stamp, after the dev install's: `rm -f .installed-*` there drops this one too when pyproject.toml changes.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	rm -f $(VENV)/.installed-bench-*
	touch $(BENCH_STAMP)

## Benchmarks the real roles as separate processes, then Celery and pgqueuer on the same workloads; prints one JSON
## line per workload and one of ratios.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
