"""Property/fuzz suite: schemathesis over the served /openapi.json, every operation.

Valid and invalid requests generated from the schemas must never get a 5xx, nor hang;
every error is in the error shape. Two servers cover the endpoints of both model kinds:
an embedding model (tiny_url) and a cross-encoder (cross_url: /score, /rerank,
/classify). Bounded: at most MAX_EXAMPLES generated cases per operation and mode, and a
per-request timeout.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.contract.util import TEI_BODY_ROUTES, TEI_ERROR_TYPES, TEI_ROUTES

MAX_EXAMPLES = 30
REQUEST_TIMEOUT = 30  # seconds: a hang fails the case instead of the suite
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases every run
    suppress_health_check=list(HealthCheck),
)


def operations(url: str) -> list[Any]:
    """Every operation of the served schema (the app as it is now)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.update(base_url=url)
    schema.config.generation.update(allow_x00=False)
    ops = [result.ok() for result in schema.get_all_operations()]
    assert ops, "the schema lists no operations"
    return ops


def check(case: Any) -> None:
    """One generated request: no 5xx, and every error answer in the error shape."""
    response = case.call(timeout=REQUEST_TIMEOUT)
    status = response.status_code
    # (bytes / bytes_only answers are binary, not text)
    text = response.content[:500].decode("utf-8", "replace")
    where = f"{case.method} {case.path} -> {status}: {text}"
    assert status < 500, where
    if status >= 400:
        body = response.json()
        if case.path in TEI_ROUTES | TEI_BODY_ROUTES and "error_type" in body:
            # TEI's own shape on its routes (docs/tei.md)
            assert set(body) == {"error", "error_type"}, where
            assert body["error_type"] in TEI_ERROR_TYPES, where
            return
        assert set(body) == {"error"}, where
        assert set(body["error"]) == {"message", "type", "param", "code"}, where
        assert body["error"]["code"] == status, where


def fuzz(url: str, mode: GenerationMode) -> list[str]:
    """Run every operation's cases; return the operations that were fuzzed."""
    done = []
    for op in operations(url):

        @FUZZ_SETTINGS
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            check(case)

        try:
            run()
        except Unsatisfiable:
            # No invalid request exists for an operation without parameters or body.
            assert mode is GenerationMode.NEGATIVE, op.path
            continue
        done.append(f"{op.method.upper()} {op.path}")
    return done


MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_embedding_server_never_fails(tiny_url: str, mode: GenerationMode) -> None:
    done = fuzz(tiny_url, mode)
    assert {"POST /v1/embeddings", "POST /pooling", "POST /tokenize"} <= set(done)


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_cross_encoder_server_never_fails(cross_url: str, mode: GenerationMode) -> None:
    done = fuzz(cross_url, mode)
    assert "POST /v1/embeddings" in done
