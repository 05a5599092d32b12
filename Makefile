# The commands a newcomer needs; the README shows the same ones.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.installed-bench-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install tools test quick soak lint dev bench migrate clean

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
	@if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make tools: installing rabbitmq-server (the tests run a node of their own; the package's own is left alone)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rabbitmq-server >/dev/null; \
	  else \
	    echo "make test: rabbitmq-server is missing: run \`sudo apt-get install rabbitmq-server\` (or give AMQP_URL)" >&2; exit 1; \
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

## Runs the whole test suite, four tests at a time on any number of cores (most of a test's time is spent waiting
## on role processes, brokers and timeouts; every test has its own database and names; a test that asserts a
## wall-clock bound, marked `timing`, runs alone), against a PostgreSQL server and a RabbitMQ node of its own
## (tests/services.py) unless DATABASE_URL and AMQP_URL name others; prints the slowest 15.
test: $(STAMP) tools
	$(BIN)/pytest -n 4 --dist worksteal --durations=15

## The inner loop: unit tests and tests within the pytest process (no role processes, roles, CLI runs, servers of a
## test's own, browser or fuzzing: the marks tests/marks.py applies), without the tools `make test` installs.
quick: $(STAMP)
	$(BIN)/pytest -n 2 -m "not processes and not roles and not browser and not fuzz and not slow" --durations=10

## The model-based tests (tests/model/) with their long budget: thousands of random sequences of what users,
## operators, the roles and faults do, each checked against the invariants (README "Faults we test"); and the API
## fuzzer with schemathesis's coverage phase and 100 examples per operation.
soak: $(STAMP) tools
	TASKMILL_MODEL_BUDGET=long $(BIN)/pytest -p no:cacheprovider -s tests/model tests/api/test_fuzz.py

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
