# Thin wrappers; the scripts are the source of truth (README: ./scripts/test.sh, ./scripts/run-dev.sh).
SHELL := /bin/bash
DIRS := agent tests bench examples

.PHONY: test run lint bench venv clean

test:
	./scripts/test.sh

run:
	./scripts/run-dev.sh

venv:
	bash scripts/_venv.sh

lint: venv
	.venv/bin/ruff check $(DIRS)
	.venv/bin/ruff format --check $(DIRS)
	.venv/bin/mypy
	.venv/bin/lint-imports

bench: venv
	.venv/bin/python bench/latency.py

clean:
	rm -rf .venv build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
