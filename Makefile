# `make test` and `make bench` each set up everything they need in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned in pyproject.toml too; --no-build-isolation needs it first.
BUILD_DEPS := torch==2.14.1 setuptools wheel ninja
export MAX_JOBS ?= 2

.PHONY: test bench build clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(BUILD_DEPS)
	$(PIP) install --quiet --no-build-isolation -e '.[test,bench]'
	touch $@

build: $(VENV)/.deps
	$(PIP) install --quiet --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest

bench: build
	$(PY) benchmarks/bench.py

clean:
	rm -rf build lstm_ext/*.so $(VENV)
