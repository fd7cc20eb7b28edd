# Yikatong — the two commands of the README quick start are `make demo` and `make test`.
.PHONY: setup demo test lint bench reliability clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/ykt demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy issuance hsm cardspec api printers
	.venv/bin/python -m pytest -n 2 tests

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy issuance hsm cardspec api printers

bench: setup
	.venv/bin/python -m bench

reliability: setup
	.venv/bin/python -m pytest -m slow tests/reliability

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
