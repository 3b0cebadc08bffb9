# Consortium: `make run` (demo on this machine) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run prod test bench venv lint clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## Fresh machine to a running demo: migrations, demo consortium, ASGI server and a Celery worker.
run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	scripts/run_demo.sh

## The production topology on this machine, from the environment (DATABASE_URL, REDIS_URL, SECRET_KEY, ...):
## two ASGI servers, two Celery workers and beat. See README, "Production topology on one machine".
prod: $(STAMP)
	scripts/run_production.sh

## The suite on SQLite, then on PostgreSQL (127.0.0.1:5432) when reachable; browser tests with chromium.
test: $(STAMP)
	scripts/test.sh

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) test-results .pytest_cache
