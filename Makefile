# Convenience targets over the `aipc-chat` CLI (POSIX shells; on Windows run the CLI directly, see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run demo demo-models test check bench clean

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

test: demo-models
	$(BIN)/python -m pytest

check: install
	$(BIN)/ruff check aipc_chat tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
