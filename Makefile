# The few verbs people type. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck unit model bench docker docs lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements/runtime.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements/runtime.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: requirements/dev.lock $(VENV)/.runtime
	$(BIN)/pip install -q --require-hashes -r requirements/dev.lock
	$(BIN)/pip install -q 'torch==2.13.0'
	touch $@

LOCK := $(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header --quiet

lock: $(VENV)/.dev  ## re-pin requirements/*.lock (with hashes) after changing dependencies in pyproject.toml
	$(LOCK) -o requirements/runtime.lock
	$(LOCK) --extra cuda -o requirements/cuda.lock
	$(LOCK) --extra dev -o requirements/dev.lock

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

docker:  ## build the image (CUDA=true|false, WEIGHTS=bvlc|torchvision|random)
	DOCKER_BUILDKIT=1 docker build --build-arg CUDA=$(or $(CUDA),true) --build-arg WEIGHTS=$(or $(WEIGHTS),bvlc) \
		-t alexnet-serve:$(if $(filter false,$(CUDA)),cpu,latest) .

bench: $(VENV)/.dev
	$(BIN)/python -m bench

docs: $(VENV)/.dev  ## build the docs site into site/ (strict: a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
