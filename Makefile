# The entry points people type.  Every target installs what it needs first.
#   make run [DURATION=40]   the main job on the local stack (simulator + whole pipeline)
#   make test                lint, types, then the whole test suite (real broker, PostgreSQL, Redis)
#   make bench [ARGS=--quick] the benchmark suite (prints a table, writes bench/results/)
#   make stop                stop the local stack
#   make up / make down      the full stack in docker/ (needs a Docker engine)

VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
TT      = $(VENV)/bin/ticktape
DURATION ?= 0
STAMP   = $(VENV)/.installed
APT_PACKAGES = redis-server prometheus prometheus-alertmanager kcat chromium chromium-driver
# config/run.env first: the main job's settings as `ticktape run` uses them; docker/.env overrides
COMPOSE = docker compose -f docker/docker-compose.yml --env-file config/run.env --env-file docker/.env

.PHONY: run test lint bench stop up down compose-check system clean

# Debian packages the local stack uses (PostgreSQL 15 binaries are expected on PATH); headless
# Chromium and its driver look at the backtest report in a test.
system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || \
	  missing="$$missing prometheus-alertmanager"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "please install:$$missing (e.g. sudo apt-get install -y $(APT_PACKAGES))"; exit 1; \
	  fi; \
	fi
	@command -v initdb >/dev/null && command -v pg_ctl >/dev/null || \
	  { echo "PostgreSQL server binaries (initdb, pg_ctl) must be on PATH"; exit 1; }

$(STAMP): pyproject.toml
	@echo "installing ticktape and its dependencies into $(VENV) (pip; a few minutes the first time) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,yahoo]'
	touch $(STAMP)

run: system $(STAMP)
	$(TT) run --duration $(DURATION)

# lint and types first: ruff (pyflakes, pycodestyle, bugbear; the format) and mypy, clean
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: system $(STAMP) lint
	$(PY) -m pytest -q

bench: system $(STAMP)
	$(PY) -m bench $(ARGS)

stop: $(STAMP)
	$(TT) stack down

# one clear line for each thing `docker compose` would otherwise fail on obscurely
compose-check:
	@docker compose version >/dev/null 2>&1 || \
	  { echo "make up needs Docker with the compose plugin ('docker compose version' fails): install docker-compose-plugin"; exit 1; }
	@test -f docker/.env || \
	  { echo "docker/.env is missing: cp docker/.env.example docker/.env, then set its passwords"; exit 1; }

up: compose-check
	$(COMPOSE) up -d --build

down: compose-check
	$(COMPOSE) down

clean: stop
	rm -rf .ticktape
