# Switchyard. `make run` runs the platform; `make test` passes the tests.
# Both set everything up first on a fresh machine: virtualenv and requirements, then
# tools/local-services starts RabbitMQ (with its management plugin) and PostgreSQL when
# they are down, and `make test` installs Debian's chromium, chromium-driver and faketime.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export PYTHONPATH := $(CURDIR)/platform:$(CURDIR)
# Tests and benchmarks run on the local PostgreSQL (as CI does) unless told otherwise.
LOCAL_POSTGRES := postgres://postgres@127.0.0.1:5432/switchyard
test bench bench-quick bench-api bench-media bench-metrics: export DATABASE_URL ?= $(LOCAL_POSTGRES)
# What `make test` and `make run` start, enable or install first (see the script's header).
LOCAL_SERVICES ?= tools/local-services
# `make test` is CI: a test that cannot find RabbitMQ, PostgreSQL or the browser, or that
# skips for any other reason, fails (tests/skip_policy.py). The one opt-out,
# SWITCHYARD_ALLOW_SKIPS=1, lets them skip and lists them at the end of the run.
test: export CI := true
# Development runs the demo tasks (also for a .env written before SWITCHYARD_DEMO_TASKS was in
# .env.example; .env still wins under honcho). Production settings refuse it.
run demo: export SWITCHYARD_DEMO_TASKS ?= 1

.PHONY: help setup services run test lint broker-check topology verify migrate demo docs clean bench \
	bench-quick bench-api bench-metrics bench-media

help:
	@echo "make run     set up, then run web (:8000), worker-slow, worker-quick, beat, Flower (:5555)"
	@echo "make test    set up, then lint and run the test suite"
	@echo "make verify  compare the live broker with the declared topology"
	@echo "make demo    the head-of-line demo: 20,000 slow jobs, then time quick probes"
	@echo "make bench   scenarios S1-S11 against their baselines in the same run (table, JSON, chart)"
	@echo "make bench-quick  the same, scaled down (a smoke run, a minute or two)"
	@echo "make bench-api  job API figures: submit latency, 100,000-item batch accept"
	@echo "make bench-media  thumbnails/s and MB/s on the slow lane (SWITCHYARD_BENCH_QUICK=1: 50 files)"
	@echo "make bench-metrics  no-op task throughput with and without metrics"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

# Start what is down on this machine, and say so (tools/local-services).
services:
	@$(LOCAL_SERVICES) run

broker-check: setup
	@$(PY) -m routing ping

topology: broker-check
	$(PY) -m routing apply

verify: setup
	$(PY) -m routing verify

migrate: setup
	$(PY) deploy/bin/ensure-database
	$(PY) platform/manage.py migrate --noinput
	$(PY) platform/manage.py collectstatic --noinput --verbosity 0

.env:
	PYTHON=$(PY) deploy/bin/dev-env .env

# Every role of `make run` records its metrics into one directory, emptied at each start
# (docs/monitoring.md); .env may point it elsewhere.
METRICS_DIR := $(CURDIR)/var/metrics

run: services setup .env topology migrate
	@echo "Switchyard: http://127.0.0.1:8000/ (health, links; dashboard /dashboard/, API docs /api/docs/, metrics /metrics)  Flower http://127.0.0.1:5555 (login in .env)"
	rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	SWITCHYARD_METRICS_DIR=$(METRICS_DIR) exec $(BIN)/honcho start --procfile Procfile --env .env

LINT = $(BIN)/ruff check routing platform client tests tools bench

lint: setup
	$(LINT)

# The machine first: a missing package stops the run before minutes of pip install.
test:
	@$(LOCAL_SERVICES) test
	@$(MAKE) --no-print-directory setup
	$(LINT)
	$(PY) -m pytest --durations=25

# Figures, not assertions: one table of Switchyard against its baselines, measured in
# the same run; var/bench/results.{txt,json} and latency.png. Run nothing else meanwhile.
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: setup
	$(PY) -m bench --quick $(BENCH_ARGS)

# Prints a table and writes var/bench/api.json (a few minutes).
bench-api: setup
	$(PY) -m pytest bench/test_api_figures.py -q -s -p no:cacheprovider --timeout 1800

# Thumbnails per second and MB/s on the slow lane for 1,000 JPEGs of ~2 MB; writes
# var/bench/media.json. SWITCHYARD_BENCH_QUICK=1 runs 50 files (under a minute).
bench-media: setup
	$(PY) -m pytest bench/test_media_figures.py -q -s -p no:cacheprovider --timeout 3600

# No-op task throughput with and without metrics; writes var/bench/metrics.json.
# SWITCHYARD_BENCH_QUICK=1 for a run under a minute.
bench-metrics: setup
	$(PY) -m pytest bench/test_metrics_overhead.py -q -s -p no:cacheprovider --timeout 3600

demo: setup
	$(PY) platform/manage.py flood --task demo.slow_task --count 20000 --tier standard --probe 20

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

docs: setup
	$(PY) tools/sync_docs.py
