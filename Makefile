# Yikatong — the README's two commands are `./run demo` and `./run test` (no make needed);
# these targets are shortcuts for developers.
.PHONY: setup demo test lint bench reliability clean

setup:
	bash scripts/setup.sh

demo:
	./run demo

test:
	./run test

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy issuance hsm cardspec readers api printers yikatong devstack console
	.venv/bin/lint-imports --no-cache

bench: setup
	.venv/bin/python -m bench

# The reliability suite (issue 7): every test under tests/reliability (races over the API,
# logs of a full demo run, security checks, bad-input corpus, kill -9 crash tests), the batch
# kill -9 crash test, and schemathesis (positive and negative) with a high example count.
RELIABILITY_EXAMPLES ?= 100
reliability: setup
	YKT_SCHEMATHESIS_EXAMPLES=$(RELIABILITY_EXAMPLES) YKT_RACE_CALLS=6000 \
	  .venv/bin/python -m pytest -n 2 \
	  tests/reliability tests/issuance/batches/test_batch_crash.py \
	  tests/api/test_api_schemathesis.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
