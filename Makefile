# Tether: `make run` serves the demo, `make test` runs the whole suite.
HOST ?= 127.0.0.1
PORT ?= 8000
# The demo's topic feed: a price tick every second on the feeds page.
DEMO_FEED ?= prices:DEMO
export HOST PORT
PY := .venv/bin/python

.PHONY: run test lint format venv migrate seed config-table clean

venv:
	@./scripts/venv.sh

# Only `run` gets the feed: nodes the tests start must not tick on their own.
run: export DEMO_FEED := $(DEMO_FEED)
run: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) manage.py collectstatic --noinput -v 0
	@echo "==> Tether on http://$(HOST):$(PORT)/  (Ctrl-C stops)"
	.venv/bin/daphne -b $(HOST) -p $(PORT) --websocket_timeout -1 project.asgi:application

# The suite waits on live nodes, browsers and containers far more than it computes:
# two workers (pytest-xdist), each test file whole in one of them (its module
# fixtures: a node, a browser, a container stack). TEST_WORKERS=0 runs it in one.
# Tests marked `alone` run afterwards, by themselves.
TEST_WORKERS ?= 2

test: venv
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not alone" $(PYTEST_ARGS)
	@# Then the tests marked `alone`, in a pytest of their own (5: none selected).
	$(PY) -m pytest -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: venv
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

migrate: venv
	$(PY) manage.py migrate --noinput

seed: venv
	$(PY) manage.py seed_demo

config-table: venv
	@$(PY) manage.py config_table

clean:
	rm -rf var/staticfiles .pytest_cache .ruff_cache
