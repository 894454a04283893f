# pyganx: set-up, build, tests, demo and benchmarks.
#
#   make demo     set up (.venv, torch, build), then train CycleGAN on the bundled digits
#   make demo-dcgan | demo-cgan | demo-cut | demo-fastcut | demo-stargan   the other variants' figures
#   make test     set up, then: CUDA + C++ build (pip), CMake/LibTorch build + ctest, pytest, and
#                 the runtime's tests in a second, torch-free venv (.venv-runtime) holding only
#                 pyganx-runtime (installs chromium + chromium-driver with apt when missing:
#                 the browser test)
#   make lint     ruff, mypy on the plugin API, the built-in plugins and pyganx-runtime, clang-format
#                 on csrc/ (make test runs it first)
#   make bench    the benchmark suites (results go to benchmarks/RESULTS.md by hand)
#
# Options: USE_SYSTEM_TORCH=1 builds into the interpreter's own environment and uses
# its torch (no venv; only missing test packages are installed); PYTHON picks it;
# PYGANX_CPU_ONLY=1 skips the CUDA kernels; MAX_JOBS sets compile parallelism.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
USE_SYSTEM_TORCH ?= 0
# With USE_SYSTEM_TORCH=1 the interpreter itself is used, not a venv on top of it: a
# venv made from an interpreter that is itself a venv would not see that venv's torch.
ifeq ($(USE_SYSTEM_TORCH),1)
  PY := $(PYTHON)
else
  PY := $(VENV)/bin/python
endif
STAMPS := .stamps
CMAKE_BUILD := build/cmake
# The torch-free environment of pyganx-runtime alone (runtime/), where its tests run.
RUNTIME_VENV ?= .venv-runtime
RPY := $(RUNTIME_VENV)/bin/python
RUNTIME_TEST_DEPS := pytest pytest-randomly httpx selenium "tritonclient[http,grpc]" openapi-spec-validator

# nvcc where the usual toolkit lives, so the CUDA kernels are always compiled there.
ifeq ($(origin CUDA_HOME),undefined)
  ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
    export CUDA_HOME := /usr/local/cuda
  endif
endif
export MAX_JOBS ?= 2

SOURCES := $(shell find csrc -type f) setup.py pyproject.toml runtime/pyproject.toml
# Python packages the tests and the harness need besides torch. ONNX export and inference
# use onnx + onnxscript + plain onnxruntime here (the `cpu` extra; never both onnxruntime
# and onnxruntime-gpu in one environment). pytorch-fid, torch-fidelity and clean-fid (with
# the torchvision that matches torch) are the references tests/test_fid.py compares with.
DEPS := numpy ninja setuptools wheel pillow tqdm pytest pytest-benchmark pytest-randomly scikit-learn matplotlib \
  onnx onnxscript onnxruntime starlette uvicorn python-multipart prometheus-client httpx selenium "tritonclient[http]" \
  torchvision==0.29.1 scipy pytorch-fid torch-fidelity clean-fid

# Lint: pinned tools, installed into the same environment (mypy reads torch's types there).
LINT_DEPS := ruff==0.17.6 mypy==2.4.1 clang-format==19.1.7
MYPY_FILES := pyganx/plugin.py pyganx/registry.py pyganx/flags.py pyganx/engine/context.py plugins runtime/pyganx_runtime
CLANG_FORMAT = $(PY) -c 'import sys, clang_format; sys.exit(clang_format.clang_format())'

.PHONY: help setup build lint test pytest runtime-test cmake-test browser demo demo-dcgan demo-cgan demo-cut demo-fastcut \
  demo-stargan bench clean

help:
	@sed -n '/^#/!q;p' Makefile

# --- environment -------------------------------------------------------------
$(STAMPS)/venv-$(USE_SYSTEM_TORCH): Makefile
	@mkdir -p $(STAMPS)
	@if [ "$(USE_SYSTEM_TORCH)" = "1" ]; then \
	  missing=$$($(PY) -c 'import importlib.util as u; print(" ".join(m for m in ["torch","numpy","ninja","setuptools","PIL","tqdm","pytest","pytest_benchmark","pytest_randomly","sklearn","matplotlib"] if u.find_spec(m) is None))'); \
	  if [ -n "$$missing" ]; then echo "USE_SYSTEM_TORCH=1: installing missing $$missing"; \
	    $(PY) -m pip install -q $$(echo $$missing | sed 's/PIL/pillow/;s/pytest_benchmark/pytest-benchmark/;s/pytest_randomly/pytest-randomly/;s/sklearn/scikit-learn/'); fi; \
	else \
	  $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(DEPS); \
	fi
	$(PY) -c 'import torch; print("torch", torch.__version__)'
	@touch $@

# --- build -------------------------------------------------------------------
# The stamp records what was built (build_info), so a second `make` is fast.
$(STAMPS)/build: $(STAMPS)/venv-$(USE_SYSTEM_TORCH) $(SOURCES)
	@mkdir -p build
	@echo "building pyganx (CUDA_HOME=$${CUDA_HOME:-none}, MAX_JOBS=$(MAX_JOBS)); log: build/pip-build.log"
	$(PY) -m pip install --no-build-isolation --no-deps -e runtime > build/pip-build.log 2>&1 \
	  || { tail -n 80 build/pip-build.log; exit 1; }
	$(PY) -m pip install --no-build-isolation --no-deps -e . >> build/pip-build.log 2>&1 \
	  || { tail -n 80 build/pip-build.log; exit 1; }
	$(PY) -c 'import json, pyganx; i = pyganx.build_info(); assert i["extension"], i["reason"]; print(json.dumps(i))' > $@.tmp
	@mv $@.tmp $@
	@cat $@

setup: $(STAMPS)/build
build: $(STAMPS)/build

# --- lint --------------------------------------------------------------------
$(STAMPS)/lint-tools: $(STAMPS)/venv-$(USE_SYSTEM_TORCH)
	$(PY) -m pip install -q $(LINT_DEPS)
	@touch $@

lint: $(STAMPS)/lint-tools
	$(PY) -m ruff check .
	$(PY) -m mypy $(MYPY_FILES)
	find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' | sort | xargs $(CLANG_FORMAT) --dry-run --Werror
	@echo "lint: ruff, mypy and clang-format found nothing"

# --- tests -------------------------------------------------------------------
TORCH_PREFIX = $(shell $(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CMAKE_CUDA_HINTS = $(if $(CUDA_HOME),-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCMAKE_CUDA_COMPILER=$(CUDA_HOME)/bin/nvcc -DTORCH_CUDA_ARCH_LIST=9.0 $(if $(wildcard $(SITE)/nvidia/cu13/lib/libnvrtc.so.13),-DCUDA_nvrtc_LIBRARY=$(SITE)/nvidia/cu13/lib/libnvrtc.so.13,),)

# The CPU build against LibTorch for C++ users (CUDA sources are compiled by the pip
# build above; not twice).
cmake-test: $(STAMPS)/venv-$(USE_SYSTEM_TORCH)
	cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DPYGANX_WITH_CUDA=OFF \
	  -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)" $(CMAKE_CUDA_HINTS) > $(CMAKE_BUILD).configure.log 2>&1 \
	  || { cat $(CMAKE_BUILD).configure.log; exit 1; }
	cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS)
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# Both suites run in a new random order each time (pytest-randomly), so that no test
# leans on another having run first; the seed is printed first and TEST_SEED=N repeats
# an order (TEST_SEED=fixed: the files' own order).
TEST_SEED ?= random
PYTEST_ORDER = seed=$(TEST_SEED); [ "$$seed" != random ] || seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
	if [ "$$seed" = fixed ]; then order="-p no:randomly"; echo "pytest in the files' order"; \
	else order="-p randomly --randomly-seed=$$seed"; echo "pytest in random order; TEST_SEED=$$seed repeats it"; fi

pytest: $(STAMPS)/build
	@$(PYTEST_ORDER); $(PY) -m pytest tests -q -p no:cacheprovider $$order

# pyganx-runtime alone, as a deployment installs it: no torch, no pyganx.
$(STAMPS)/venv-runtime: runtime/pyproject.toml Makefile
	@mkdir -p $(STAMPS)
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RPY) -m pip install -q -e './runtime[cpu,serve]' $(RUNTIME_TEST_DEPS)
	$(RPY) -c 'import importlib.util as u; assert u.find_spec("torch") is None, "torch got into $(RUNTIME_VENV)"'
	@touch $@

# The runtime's tests in the torch-free venv, on models pyganx exports first (tests/runtime_models.py).
runtime-test: $(STAMPS)/build $(STAMPS)/venv-runtime browser
	rm -rf build/runtime-models
	$(PY) tests/runtime_models.py build/runtime-models > build/runtime-models.log 2>&1 \
	  || { tail -n 40 build/runtime-models.log; exit 1; }
	@$(PYTEST_ORDER); PYGANX_TEST_MODELS=build/runtime-models PYGANX_TORCH_FREE=1 \
	  $(RPY) -m pytest runtime/tests -q -p no:cacheprovider $$order

test: lint $(STAMPS)/build cmake-test browser pytest runtime-test

# The web page of `pyganx serve` is tested in headless Chromium: Debian's chromium and
# chromium-driver, installed with apt when missing (CI runs as root; elsewhere sudo).
browser:
	@if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then \
	  echo "installing chromium and chromium-driver with apt (for tests/test_serve.py)"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver"; \
	  $$install >/dev/null 2>&1 || { $$sudo apt-get update -qq || true; $$install >/dev/null; }; \
	fi

# --- main job and benchmarks --------------------------------------------------
# The main job: CycleGAN on the bundled digits (handwritten <-> typeset), on CPU in a few
# minutes, into a fresh runs/demo, then `pyganx eval` (docs/metrics.md). DEMO_STEPS /
# DEMO_FLAGS change it.
DEMO_STEPS ?= 600
DEMO_FLAGS ?= --ngf 32 --ndf 32
demo: $(STAMPS)/build
	rm -rf runs/demo
	$(PY) -m pyganx train cyclegan --demo digits --steps $(DEMO_STEPS) $(DEMO_FLAGS) \
	  --sample-every 100 --checkpoint-every 200 -o runs/demo
	$(PY) -m pyganx eval runs/demo
	@echo "run directory: runs/demo  samples: runs/demo/samples/  losses: runs/demo/losses.csv, losses.png"
	@echo "checkpoints: runs/demo/checkpoints/  quality figures: runs/demo/eval.json"

# The README's figures for the other variants, each into a fresh runs/<variant>, then its
# figures over training (`pyganx eval --all-checkpoints`). CPU times on 2 cores: dcgan and
# cgan about 10 minutes each, stargan about 1 hour alone on an AVX-512 CPU
# (16000 steps at 0.22-0.23 s; about 2 hours on an AVX2 one at 0.47 s).
demo-dcgan demo-cgan: demo-%: $(STAMPS)/build
	rm -rf runs/$*
	$(PY) -m pyganx train $* --demo digits --steps 3000 --batch-size 64 --ngf 32 --ndf 32 \
	  --sample-every 500 --checkpoint-every 250 --keep 20 -o runs/$*
	$(PY) -m pyganx eval runs/$* --all-checkpoints
	$(PY) -m pyganx eval runs/$*

# CUT and FastCUT on the digits, in no more time than `make demo` trains CycleGAN: batch 4,
# PatchNCE weight 2 without the pixel layer, D augmented (docs/variants.md says why).
CUT_DEMO_FLAGS := --demo digits --batch-size 4 --ngf 32 --ndf 32 --lambda-nce 2 --nce-layers 4,8,12,16 \
  --d-augment translation,cutout --d-augment-p 1 --sample-every 100 --checkpoint-every 200
demo-cut: $(STAMPS)/build
	rm -rf runs/cut
	$(PY) -m pyganx train cut $(CUT_DEMO_FLAGS) --steps 400 -o runs/cut
	$(PY) -m pyganx eval runs/cut

demo-fastcut: $(STAMPS)/build
	rm -rf runs/fastcut
	$(PY) -m pyganx train fastcut $(CUT_DEMO_FLAGS) --decay-start 0.5 --steps 600 -o runs/fastcut
	$(PY) -m pyganx eval runs/fastcut

demo-stargan: $(STAMPS)/build
	rm -rf runs/stargan
	$(PY) -m pyganx train stargan --demo digits --steps 16000 --batch-size 16 --g-conv-dim 32 --d-conv-dim 64 \
	  --d-per-domain --d-augment 0.125 --sample-every 2000 --checkpoint-every 2000 --keep 10 -o runs/stargan
	$(PY) -m pyganx eval runs/stargan --all-checkpoints

bench: $(STAMPS)/build
	$(PY) -m pytest benchmarks -q -p no:cacheprovider --benchmark-only --benchmark-columns=min,median,rounds
	$(PY) -m pyganx bench ops --json build/bench-ops.json

clean:
	rm -rf build $(STAMPS) pyganx/_C*.so pyganx/_build_meta.py *.egg-info
