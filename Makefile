# Tether: `make run` serves the demo, `make test` runs the whole suite.
HOST ?= 127.0.0.1
PORT ?= 8000
# The demo's topic feed: a price tick every second on the feeds page.
DEMO_FEED ?= prices:DEMO
export HOST PORT DEMO_FEED
PY := .venv/bin/python

.PHONY: run test lint format venv migrate seed config-table clean

venv:
	@./scripts/venv.sh

run: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) manage.py collectstatic --noinput -v 0
	@echo "==> Tether on http://$(HOST):$(PORT)/  (Ctrl-C stops)"
	.venv/bin/daphne -b $(HOST) -p $(PORT) --websocket_timeout -1 project.asgi:application

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

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
