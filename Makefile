# make bench: the benchmark suite; make test: the tests. Both create or reuse .venv, install
# what requirements.txt lists, and build the extension first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS := $(VENV)/.requirements-installed
EDITABLE := $(VENV)/.pylosses-editable

.PHONY: all build test bench device-check clean

all: test

$(REQS): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --upgrade -r requirements.txt
	touch $@

# pylosses importable from this tree wherever the venv runs (the extension is built below)
$(EDITABLE): $(REQS) setup.py pyproject.toml
	PYLOSSES_NO_EXTENSION=1 $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(EDITABLE)
	$(PY) setup.py --quiet build_ext --inplace
	$(PY) -c "import pylosses._C"

test: build
	$(PY) -m pytest

bench: build
	$(PY) -m benchmarks

clean:
	rm -rf build *.egg-info pylosses/_C*.so
