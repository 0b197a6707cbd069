# The few verbs people type. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck unit model bench docker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

serve: $(VENV)/.runtime  ## install, build the model if missing, serve on :8000
	$(BIN)/python -m app

test: lint typecheck unit  ## install and run the whole suite: ruff, mypy --strict, pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

unit: $(VENV)/.dev
	$(BIN)/pytest

model: $(VENV)/.runtime  ## export model/alexnet.onnx (WEIGHTS=bvlc|torchvision|random)
	$(BIN)/python -m model export --weights $(or $(WEIGHTS),bvlc)

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
