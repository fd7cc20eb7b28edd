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
	.venv/bin/mypy issuance hsm cardspec api printers

bench: setup
	.venv/bin/python -m bench

reliability: setup
	.venv/bin/python -m pytest -m slow tests/reliability

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
