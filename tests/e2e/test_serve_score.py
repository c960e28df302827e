"""`poolserve serve CROSS_ENCODER --task score` as a subprocess, driven by vLLM's
cross-encoder example payloads sent with plain requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def score_server(
    tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    model = tiny("cross", "bert")
    server = ServerProcess(
        [str(model), "--task", "score", "--served-model-name", "reranker"],
        tmp_path_factory.mktemp("e2e-score"),
    ).start()
    try:
        server.wait_healthy()
        yield server
    finally:
        server.terminate()


@pytest.mark.parametrize(
    ("text_1", "text_2", "count"),
    [
        ("What is the capital of France?", "The capital of France is Paris.", 1),
        (
            "What is the capital of France?",
            ["The capital of Brazil is Brasilia.", "The capital of France is Paris."],
            2,
        ),
        (
            ["What is the capital of Brazil?", "What is the capital of France?"],
            ["The capital of Brazil is Brasilia.", "The capital of France is Paris."],
            2,
        ),
    ],
)
def test_vllm_example_payloads(
    score_server: ServerProcess, text_1: object, text_2: object, count: int
) -> None:
    body = {"model": "reranker", "text_1": text_1, "text_2": text_2}
    r = requests.post(f"{score_server.url}/score", json=body, timeout=30)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(count))
    assert all(0.0 <= d["score"] <= 1.0 for d in data)  # sigmoid of one logit


def test_rerank_and_unsupported_embeddings(score_server: ServerProcess) -> None:
    docs = ["Paris is the capital of France.", "Berlin is in Germany.", "Cats purr."]
    r = requests.post(
        f"{score_server.url}/v1/rerank",
        json={"query": "capital of France", "documents": docs, "top_n": 2},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert {res["document"]["text"] for res in results} <= set(docs)
    r = requests.post(f"{score_server.url}/v1/embeddings", json={"input": "x"}, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "The model does not support Embeddings API"
    assert score_server.terminate() == 0
