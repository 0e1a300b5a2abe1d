# make demo : set up, then run the perturbation and low-rank benchmarks (the main job for now)
# make test : set up, then run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pgap-installed
SOURCES := $(shell find csrc -type f) CMakeLists.txt setup.py pyproject.toml

.PHONY: setup test test-gpu demo bench info clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The CPU wheel of torch 2.13.0 lies on local disk; never pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "setuptools>=77" wheel "pybind11>=2.12" "cmake>=3.24" ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench]"
	$(PY) -m pgap_kernels.info
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra tests

# On a machine with a GPU: the GPU-marked tests only (TRITON_INTERPRET must be unset).
test-gpu: setup
	env -u TRITON_INTERPRET $(PY) -m pytest -q -ra -m gpu tests

demo: setup
	$(PY) bench/bench_perturb.py
	$(PY) bench/bench_lowrank.py

bench: demo

info: setup
	$(PY) -m pgap_kernels.info

clean:
	rm -rf build $(VENV) *.egg-info pgap_kernels/_C*.so
