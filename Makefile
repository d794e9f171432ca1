# make bench: the benchmark suite; make test: the tests. Both create or reuse .venv, install
# what requirements.txt lists, and build the extension first: its CUDA kernels too when nvcc is
# found and torch is a CUDA build (CUDA=1 insists, CUDA=0 skips them).
# make device-check: on a GPU machine, build, run the GPU tests and a short benchmark within
# 8.5 minutes, results into $OUT/<gpu>-<date>/ when OUT is set (tools/device_check.py; with no
# GPU it builds and says what it would run).
PYTHON ?= python3
CUDA ?= auto
BUILD_CUDA = $(CUDA)
# make bench on a machine without a GPU has no use for the CUDA kernels: it skips their build
bench: BUILD_CUDA = $(if $(filter auto,$(CUDA)),$(if $(wildcard /dev/nvidia0),auto,0),$(CUDA))
# VENV, REQUIREMENTS and PYTHON may be set: .ci/run tests a second environment with the GPU
# machine's versions (.ci/requirements-gpu-machine.txt) this way
VENV ?= .venv
REQUIREMENTS ?= requirements.txt
PY := $(VENV)/bin/python
REQS := $(VENV)/.requirements-installed
EDITABLE := $(VENV)/.pylosses-editable

.PHONY: all build test bench gate device-check clean

all: test

$(REQS): $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --upgrade -r $(REQUIREMENTS)
	touch $@

# pylosses importable from this tree wherever the venv runs (the extension is built below)
$(EDITABLE): $(REQS) setup.py pyproject.toml
	PYLOSSES_NO_EXTENSION=1 $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(EDITABLE)
	@if [ "$(BUILD_CUDA)" = 1 ] || { [ "$(BUILD_CUDA)" = auto ] && command -v nvcc >/dev/null && \
	     $(PY) -c "import sys, torch; sys.exit(torch.version.cuda is None)"; }; then \
	  echo "FORCE_CUDA=1 $(PY) setup.py --quiet build_ext --inplace"; \
	  FORCE_CUDA=1 $(PY) setup.py --quiet build_ext --inplace; \
	else \
	  echo "USE_CUDA=0 $(PY) setup.py --quiet build_ext --inplace"; \
	  USE_CUDA=0 $(PY) setup.py --quiet build_ext --inplace; \
	fi
	$(PY) -c "import pylosses._C"

# PYTEST_ARGS: more pytest arguments (.ci/run's second leg leaves out what it repeats).
# PYTEST_WORKERS: pytest-xdist processes, each taking whole test files (--dist loadfile: a
# file's module fixtures, such as the CUDA emulation's build, are made once); 0 runs in one.
# The 15 slowest tests are listed at the end (where CI's time goes).
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
test: build
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) --durations=15 $(PYTEST_ARGS)

bench: build
	$(PY) -m benchmarks

# the sm_90 compiled-code gate's table (a prediction from static code), also run by make test
gate: build
	env -u TRITON_INTERPRET $(PY) tools/sm90_gate.py

# the GPU machine has torch, triton and pytest but no .venv and no network: its own python3
device-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) tools/device_check.py

clean:
	rm -rf build *.egg-info pylosses/_C*.so
