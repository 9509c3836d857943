# Entry points: `make demo`, `make test` and `make image-test`. Each builds .venv from scratch when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test image-test lint typecheck bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata or its locked versions change. The lock
# files pin every package (requirements.lock for the servers, as in the image;
# requirements-dev.lock adds the test and bench tools), so a fresh machine installs
# what CI tested.
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements-dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c requirements-dev.lock -e '.[test,bench]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/python -m bench.demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check proxy jobserver infra bench tests
	$(BIN)/ruff format --check proxy jobserver infra bench tests
	$(BIN)/hadolint Dockerfile tests/image/standins.Containerfile

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

# Builds the image with docker or podman and runs it for real: compose.yaml's services,
# the jobclient through them, the health check, a stop with held requests, the replicas
# profile (tests/image/__main__.py says what each step checks).
image-test: $(VENV)/.installed-image-test
	$(BIN)/python -m tests.image

# What the image test itself runs on (the project runs inside the image): two packages,
# at their locked versions, so that a fresh clone gets to the image quickly.
$(VENV)/.installed-image-test: requirements-dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c requirements-dev.lock httpx pyyaml
	touch $@

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench

# Re-resolve the lock files from pyproject.toml (newest versions that fit).
LOCK_FLAGS := --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile $(LOCK_FLAGS) -o requirements.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra test --extra bench -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
