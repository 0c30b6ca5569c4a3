# payment-worker: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

# No trace exporter unless one is asked for (OTEL_TRACES_EXPORTER=console make demo, or otlp
# with OTEL_EXPORTER_OTLP_ENDPOINT): the dev environment has the SDK, and nothing listens on
# the OTLP default port here.
export OTEL_TRACES_EXPORTER ?= none

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
LOCK_ARGS := --upgrade --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command "make lock"

$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install the locked dependencies and the package (editable)

.PHONY: lock
lock: ## Resolve pyproject.toml again into requirements.lock and requirements-dev.lock (hashed)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml $(LOCK_ARGS) -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml --extra dev -c $(LOCK) $(LOCK_ARGS) -o $(DEV_LOCK)

.PHONY: demo
demo: install services ## Start everything on this machine and send sample payments (Ctrl-C stops it)
	$(BIN)/payment-worker demo --keep-running

.PHONY: demo-once
demo-once: install services ## The demo without waiting: print the outcomes and stop
	$(BIN)/payment-worker demo --once

.PHONY: demo-stripe
demo-stripe: install services ## The demo with the Stripe gateway on localstripe (Ctrl-C stops it)
	$(BIN)/payment-worker demo --gateway stripe --keep-running

# The local stack (`make broker`, `make devserver`): defaults for `make run`, `make shim`,
# `make replay` and `make topics`, unless the variable is already set.
LOCAL := run shim replay topics
$(LOCAL): export PAYMENT_ORDERING_URL ?= http://127.0.0.1:5002
$(LOCAL): export PAYMENT_INVENTORY_URL ?= http://127.0.0.1:5002

.PHONY: shim
shim: install ## Run the HTTP shim on PAYMENT_SHIM_PORT, default 5004 (foreground)
	$(BIN)/payment-worker shim

.PHONY: replay
replay: install services ## Replay a topic (ARGS=..., e.g. ARGS="--topic process-payment-dlq")
	$(BIN)/payment-worker replay $(ARGS)

.PHONY: topics
topics: install ## Create the configured topics that are missing (ARGS=--dry-run to look only)
	$(BIN)/payment-worker topics $(ARGS)

.PHONY: services
services: ## Install (apt-get, when missing) and start PostgreSQL and Redis on this machine
	@bash scripts/ensure-services.sh

.PHONY: test
test: install services ## Run every test (unit, integration, e2e) on real services, two files at a time
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile $(PYTEST_ARGS)

# The property tests below run a fraction of their examples in `make test` (tests/scale.py).
PROPERTY_TESTS := tests/unit/test_shim_request.py tests/unit/test_validation.py \
	tests/unit/test_codec.py

.PHONY: reliability
reliability: install services ## Fault-injection and bad-input suite at full scale, with a summary table
	RELIABILITY_FULL=1 $(BIN)/pytest -q -p no:cacheprovider tests/e2e/reliability \
		tests/e2e/test_resilience.py $(PROPERTY_TESTS) $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## Run the unit tests only (no services needed)
	$(BIN)/pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

.PHONY: bench
bench: install services ## Benchmark worker (beside a FastStream peer), shim and replay; writes bench/results.json
	$(BIN)/python -m bench.run

.PHONY: bench-quick
bench-quick: install services ## A small benchmark (about 5 minutes here); writes bench/results-quick.json
	$(BIN)/python -m bench.run --quick

.PHONY: bench-ab
bench-ab: install services ## The worker's CPU per command against BASELINE=REV, alternately on one broker
	@test -n "$(BASELINE)" || { echo "usage: make bench-ab BASELINE=<git revision>"; exit 2; }
	$(BIN)/python -m bench.ab --baseline $(BASELINE)

.PHONY: migrate
migrate: install services ## Create or upgrade the database schema (PAYMENT_DB_SCHEMA)
	$(BIN)/payment-worker migrate

.PHONY: schema
schema: install services ## Write payment_worker/sql/schema.sql again from a freshly migrated schema
	$(BIN)/python -m payment_worker.adapters.postgres.schema_dump

.PHONY: broker
broker: install ## Run Apache Kafka (KRaft, one node) on 127.0.0.1:9092 (foreground; fetched once)
	$(BIN)/python -m payment_worker.devstack.broker --port 9092

.PHONY: kafka-lock
kafka-lock: install ## Resolve payment_worker/devstack/kafka/pom.xml again into kafka.lock (digests)
	$(BIN)/python -m payment_worker.devstack.broker --lock

.PHONY: devserver
devserver: install ## Run the development Ordering/Inventory server on :5002 (foreground)
	$(BIN)/python -m payment_worker.devstack.services --port 5002 --seed 100

.PHONY: stripe-mock
stripe-mock: ## Run stripe-mock, Stripe's own API stand-in, on 127.0.0.1:12111 (foreground; built once)
	@tool=$$(bash scripts/stripe-mock.sh) && \
		exec "$$tool" -http-addr 127.0.0.1:12111 -https-addr 127.0.0.1:12112

.PHONY: run
run: install services ## Migrate, then run the worker against PAYMENT_* settings (foreground)
	$(BIN)/payment-worker migrate
	$(BIN)/payment-worker run

.PHONY: lint
lint: install ## ruff and mypy
	$(BIN)/ruff check payment_worker tests bench
	$(BIN)/mypy payment_worker

.PHONY: clean
clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .devstack .pytest_cache .ruff_cache .mypy_cache *.egg-info
