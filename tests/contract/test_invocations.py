"""POST /invocations (SageMaker) dispatches by request shape and served task."""

from __future__ import annotations

import numpy as np
import requests


def post(url: str, body: object) -> requests.Response:
    return requests.post(url + "/invocations", json=body, timeout=60)


def test_embeddings_shape_is_embedded(default_url: str) -> None:
    direct = requests.post(default_url + "/v1/embeddings", json={"input": ["a b"]}, timeout=60)
    via = post(default_url, {"input": ["a b"]})
    assert via.status_code == 200, via.text
    assert via.json()["object"] == "list"
    assert via.json()["id"].startswith("embd-")
    np.testing.assert_allclose(
        via.json()["data"][0]["embedding"], direct.json()["data"][0]["embedding"], atol=1e-6
    )


def test_score_and_rerank_shapes(default_url: str) -> None:
    r = post(default_url, {"text_1": "a cat", "text_2": ["a cat", "a car"]})
    assert r.status_code == 200, r.text
    assert r.json()["id"].startswith("score-")
    assert len(r.json()["data"]) == 2
    r = post(default_url, {"query": "a cat", "documents": ["a car", "a cat"]})
    assert r.status_code == 200, r.text
    assert r.json()["id"].startswith("rerank-")
    assert r.json()["results"][0]["index"] == 1


def test_no_matching_shape_is_400(default_url: str) -> None:
    r = post(default_url, {"nothing": 1})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 400
    r = post(default_url, {"input": 12.5})
    assert r.status_code == 400
    assert "input" in r.json()["error"]["message"]
