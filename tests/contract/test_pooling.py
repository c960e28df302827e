"""POST /pooling on an embedding model: `data` is the embedding vector."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from tests.contract.util import (
    TINY_MAX_LEN,
    TINY_NAMES,
    assert_error,
    context_message,
    embed,
    expected_usage,
    ok,
    post,
    vectors,
)

TEXTS = ["A woman is playing the violin.", "Dogs and cats are popular pets."]


def test_pooling_response_shape(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    resp = post(
        tiny_url,
        "/pooling",
        {"input": TEXTS, "model": TINY_NAMES[1]},
        headers={"X-Request-Id": "pool-test"},
    )
    body = ok(resp)
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"] == "pool-pool-test" and resp.headers["x-request-id"] == "pool-test"
    assert body["object"] == "list" and isinstance(body["created"], int)
    assert body["model"] == TINY_NAMES[1]
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["object"] == "pooling"
        assert set(item) == {"index", "object", "data"}
    n = sum(len(tiny_tok(t)["input_ids"]) for t in TEXTS)
    assert body["usage"] == expected_usage(n)
    assert ok(post(tiny_url, "/pooling", {"input": "hi"}))["id"].startswith("pool-")


@pytest.mark.parametrize("task", [None, "embed"])
def test_pooling_data_is_the_embedding(tiny_url: str, task: str | None) -> None:
    req: dict[str, Any] = {"input": TEXTS}
    if task is not None:
        req["task"] = task
    got = vectors(ok(post(tiny_url, "/pooling", req)), "data")
    np.testing.assert_allclose(got, embed(tiny_url, TEXTS), atol=1e-6)


def test_pooling_token_ids_and_switches(tiny_url: str) -> None:
    ids = [[2, 50, 60, 70, 3], [2, 80, 3]]
    got = vectors(ok(post(tiny_url, "/pooling", {"input": ids, "normalize": False})), "data")
    np.testing.assert_allclose(got, embed(tiny_url, ids, normalize=False), atol=1e-6)
    got = vectors(ok(post(tiny_url, "/pooling", {"input": ids[0]})), "data")
    np.testing.assert_allclose(got, embed(tiny_url, ids[0]), atol=1e-6)


def test_pooling_truncation_and_length(tiny_url: str) -> None:
    ids = list(range(10, 80))
    body = ok(post(tiny_url, "/pooling", {"input": ids, "truncate_prompt_tokens": 6}))
    assert body["usage"] == expected_usage(6)
    np.testing.assert_allclose(vectors(body, "data"), embed(tiny_url, ids[-6:]), atol=1e-6)
    resp = post(tiny_url, "/pooling", {"input": ids})
    assert_error(resp, 400, message=context_message(TINY_MAX_LEN, len(ids)))


def test_pooling_dimensions_as_embeddings(tiny_url: str) -> None:
    # Newest vLLM: /pooling takes `dimensions` for the embed task (older vLLM said 400).
    resp = post(tiny_url, "/pooling", {"input": "hi", "dimensions": 8})
    assert resp.status_code == 200, resp.text
    pooled = resp.json()["data"][0]["data"]
    ref = post(tiny_url, "/v1/embeddings", {"input": "hi", "dimensions": 8}).json()
    assert len(pooled) == 8
    assert pooled == ref["data"][0]["embedding"]


def test_pooling_dimensions_on_a_classifier_is_400(classifier_url: str) -> None:
    resp = post(classifier_url, "/pooling", {"input": "hi", "dimensions": 8})
    assert_error(resp, 400, contains="does not support ['dimensions']")


@pytest.mark.parametrize("task", ["classify", "score", "bogus", ""])
def test_pooling_other_tasks_are_400(tiny_url: str, task: str) -> None:
    assert_error(post(tiny_url, "/pooling", {"input": "hi", "task": task}), 400, contains="task")


def test_pooling_priority_is_400(tiny_url: str) -> None:
    assert_error(
        post(tiny_url, "/pooling", {"input": "hi", "priority": 2}), 400, contains="priority"
    )
