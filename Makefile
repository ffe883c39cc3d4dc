# onecard — the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo counter-session test check lint typecheck imports pytest setup system pcsc clean contract bench chaos fuzz screenshots

## demo: set everything up, then broker + gateway on SQLite + a simulated fleet with a live
## dashboard, until Ctrl-C (DEMO_ARGS="--duration 60" for a timed run)
demo: setup
	$(BIN)/onecard demo run $(DEMO_ARGS)

## counter-session: the README's scripted counter session on a fresh SQLite registry
counter-session: setup
	bash deploy/demo/counter-session.sh

## test: set everything up, then lint, type-check, import contracts and the whole test suite
test: setup lint typecheck imports pytest

setup: system $(STAMP) pcsc

# pcscd + the vsmartcard vpcd driver + pyscard (built from source) for the PC/SC reader tests
pcsc: $(STAMP)
	@bash deploy/ci/install-pcsc.sh $(VENV)

# Debian packages the tests and the demo need (root on these machines; skipped when present)
system:
	@bash deploy/ci/install-system.sh

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,postgres,fast]"
	touch $(STAMP)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

imports:
	$(BIN)/lint-imports

pytest:
	bash deploy/ci/start-services.sh
	$(BIN)/pytest -q -n 2 --durations=30

## screenshots: the portal's main pages at phone (360 px) and desktop width -> docs/screenshots/
## (the browser tests in Debian's Chromium against a real onecard web + serve + Mosquitto)
screenshots: setup
	ONECARD_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q -m browser tests/web

## bench: benchmark suite -> docs/benchmarks.md + bench/results/ (BENCH_ARGS=--quick for ~3 min)
bench: setup
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## chaos: the chaos suite of issue 8 at full size (about 15 min, root): kills, partition, full disk,
## slow counter, flooding and offline terminals -> results table + docs/reliability.md
chaos: setup
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

## fuzz: the AsyncAPI-schema fuzzer at rate through a private broker and `onecard serve`, with a
## well-behaved POS tapping (default 120 s at 400 msg/s; FUZZ_ARGS="--duration 600 --seed 7")
fuzz: setup
	$(BIN)/python -m tests.fuzz $(FUZZ_ARGS)

## contract: regenerate the AsyncAPI document from the wire models
contract:
	$(BIN)/python -m protocol.wire.asyncapi > docs/asyncapi.json

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
