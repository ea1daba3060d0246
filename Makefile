# `make test` and `make bench` each set up everything they need in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The development venv's torch: the CUDA 13 build, so the CUDA part compiles here
# (pyproject.toml admits a range). --no-build-isolation needs it first.
BUILD_DEPS := torch==2.14.1 setuptools wheel ninja
export MAX_JOBS ?= 2

.PHONY: test bench build sanitize gpu-check clean

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

# The C++ under AddressSanitizer and UndefinedBehaviorSanitizer: a CPU-only
# build in its own tree (build/sanitize), its tests run with the runtimes
# preloaded into Python (--capture=sys keeps their reports on stderr). Leak
# detection is off: CPython itself leaks at exit.
SAN_DIR := build/sanitize
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
sanitize: $(VENV)/.deps
	rm -rf $(SAN_DIR) && mkdir -p $(SAN_DIR)
	cp -r .ci csrc lstm_ext tests examples benchmarks setup.py pyproject.toml README.md $(SAN_DIR)/
	rm -f $(SAN_DIR)/lstm_ext/*.so
	cd $(SAN_DIR) && LSTM_EXT_CUDA=0 CFLAGS="$(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)" \
		$(abspath $(PY)) setup.py --quiet build_ext --inplace
	for so in $(SAN_DIR)/lstm_ext/_C*.so $(SAN_DIR)/lstm_ext/_emu*.so; do \
		nm -D $$so | grep -q __asan_report || { echo "$$so: not instrumented"; exit 1; }; \
	done
	cd $(SAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 PYTHONPATH=. \
		$(abspath $(PY)) -m pytest -p no:cacheprovider -q --capture=sys

# On a machine with a GPU, offline, with its own python3 and CUDA build of torch:
# builds, tests and benchmarks there, into gpu-check/<time>/ (.ci/gpu_check.py).
gpu-check:
	$(PYTHON) .ci/gpu_check.py

clean:
	rm -rf build lstm_ext/*.so $(VENV)
