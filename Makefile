# riskstream: one machine, real engines. `make demo` and `make test` install what they need first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RISKSTREAM_SEED_DATA ?= $(abspath ../shared/data)
# Keep torch from oversubscribing the 2 cores when several processes share them.
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast lint typecheck services-up services-down clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (riskstream needs Python 3.11)"; exit 1; }
	@free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); test -d $(VENV)/lib || test "$$free_kb" -ge 8000000 || { \
		echo "error: $$((free_kb / 1024)) MB free here; the virtualenv needs about 8 GB (PyPI's torch wheels bring CUDA libraries)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24,<27"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	bash scripts/install-system-deps.sh
	touch $(STAMP)

demo: install
	$(BIN)/riskstream demo

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not services and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

services-up: install
	$(BIN)/riskstream services up

services-down: install
	$(BIN)/riskstream services down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
