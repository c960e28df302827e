"""POST /classify (and /pooling) for sequence-classification models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import (
    CROSS_MAX_LEN,
    assert_error,
    context_message,
    expected_usage,
    ok,
    post,
    vectors,
)
from tests.fixtures.several import one_model

TEXTS = ["the cat sits on the mat", "what is the capital of France?", "hello world"]


def _logits(path: Path, texts: list[str]) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        out = model(**tok(texts, padding=True, return_tensors="pt")).logits
    return np.asarray(out.numpy(), dtype=np.float64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x)))


def _probs(body: dict[str, Any]) -> np.ndarray:
    return vectors(body, key="probs").astype(np.float64)


def test_classify_two_labels(classifier_url: str, classifier_dir: Path) -> None:
    body = ok(post(classifier_url, "/classify", {"input": TEXTS},
                   headers={"X-Request-Id": "c1"}))  # fmt: skip
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"] == "classify-c1"
    assert body["object"] == "list"
    assert body["model"] == str(classifier_dir)
    logits = _logits(classifier_dir, TEXTS)
    probs = _probs(body)
    np.testing.assert_allclose(probs, _softmax(logits), atol=1e-5)
    for item, row in zip(body["data"], logits, strict=True):
        assert set(item) == {"index", "label", "probs", "num_classes"}
        assert item["num_classes"] == 2
        assert item["label"] == f"LABEL_{int(row.argmax())}"
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    assert body["usage"] == expected_usage(sum(len(tok(t)["input_ids"]) for t in TEXTS))


def test_classify_single_string_and_token_ids(classifier_url: str, classifier_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    single = _probs(ok(post(classifier_url, "/classify", {"input": TEXTS[0]})))
    ids = tok(TEXTS[0])["input_ids"]
    from_ids = _probs(ok(post(classifier_url, "/classify", {"input": ids})))
    np.testing.assert_allclose(single, from_ids, atol=1e-6)
    assert single.shape == (1, 2)


@pytest.mark.parametrize("switch", ["activation", "use_activation"])
def test_activation_false_gives_logits(
    classifier_url: str, classifier_dir: Path, switch: str
) -> None:
    body = ok(post(classifier_url, "/classify", {"input": TEXTS, switch: False}))
    np.testing.assert_allclose(_probs(body), _logits(classifier_dir, TEXTS), atol=1e-5)


def test_empty_string_is_400(classifier_url: str) -> None:
    resp = post(classifier_url, "/classify", {"input": ""})
    assert_error(resp, 400, message="Input cannot be empty for classification")


def test_empty_list_is_empty_data(classifier_url: str) -> None:
    body = ok(post(classifier_url, "/classify", {"input": []}))
    assert body["data"] == []
    assert body["usage"] == expected_usage(0)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"normalize": True}, "normalize"),
        ({"softmax": True}, "softmax"),
        ({"activation": True, "use_activation": False}, "activation"),
        ({"input": [1, "a"]}, "input"),
        ({"input": [10**9]}, "input"),
        ({"priority": 3}, "priority"),
    ],
)
def test_bad_requests_are_400(classifier_url: str, fields: dict[str, Any], param: str) -> None:
    resp = post(classifier_url, "/classify", {"input": "hello", **fields})
    assert_error(resp, 400, param=param)


def test_over_length_is_400(classifier_url: str, classifier_dir: Path) -> None:
    text = "the quick brown fox " * 40
    n = len(AutoTokenizer.from_pretrained(classifier_dir)(text)["input_ids"])
    resp = post(classifier_url, "/classify", {"input": text})
    assert_error(resp, 400, message=context_message(CROSS_MAX_LEN, n, "classification"))
    body = ok(post(classifier_url, "/classify", {"input": text, "truncate_prompt_tokens": 10}))
    assert body["usage"]["prompt_tokens"] == 10


@one_model
def test_embedding_model_has_no_classification(default_url: str) -> None:
    resp = post(default_url, "/classify", {"input": "hello"})
    assert_error(resp, 400, message="The model does not support Classification API")


@one_model
def test_classifier_has_no_embeddings(classifier_url: str) -> None:
    resp = post(classifier_url, "/v1/embeddings", {"input": "hello"})
    assert_error(resp, 400, message="The model does not support Embeddings API")


# -- /pooling of a classifier: the probability vector ---------------------------------


def test_pooling_returns_probabilities(classifier_url: str, classifier_dir: Path) -> None:
    logits = _logits(classifier_dir, TEXTS)
    body = ok(post(classifier_url, "/pooling", {"input": TEXTS}))
    assert body["id"].startswith("pool-")
    np.testing.assert_allclose(vectors(body, "data"), _softmax(logits), atol=1e-5)
    body = ok(post(classifier_url, "/pooling", {"input": TEXTS, "task": "classify"}))
    np.testing.assert_allclose(vectors(body, "data"), _softmax(logits), atol=1e-5)
    body = ok(post(classifier_url, "/pooling", {"input": TEXTS, "activation": False}))
    np.testing.assert_allclose(vectors(body, "data"), logits, atol=1e-5)
    body = ok(post(classifier_url, "/pooling", {"input": TEXTS, "encoding_format": "base64"}))
    np.testing.assert_allclose(vectors(body, "data"), _softmax(logits), atol=1e-5)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"task": "embed"}, "task"), ({"normalize": False}, "normalize"),
     ({"dimensions": 1}, "dimensions")],
)  # fmt: skip
def test_pooling_bad_fields_are_400(
    classifier_url: str, fields: dict[str, Any], param: str
) -> None:
    assert_error(post(classifier_url, "/pooling", {"input": "a", **fields}), 400, param=param)


# -- one label, and multi-label configs -----------------------------------------------


def test_cross_encoder_classify_is_sigmoid(cross_url: str, cross_dir: Path) -> None:
    body = ok(post(cross_url, "/classify", {"input": TEXTS}))
    logits = _logits(cross_dir, TEXTS)
    np.testing.assert_allclose(_probs(body), _sigmoid(logits), atol=1e-5)
    assert all(d["num_classes"] == 1 and d["label"] == "LABEL_0" for d in body["data"])
    # /pooling of a model served for score: its score activation (sigmoid here).
    pooled = vectors(ok(post(cross_url, "/pooling", {"input": TEXTS})), "data")
    np.testing.assert_allclose(pooled, _sigmoid(logits), atol=1e-5)


@pytest.fixture(scope="module")
def multi_label(tiny: Callable[..., Path]) -> Iterator[tuple[str, Path]]:
    path = tiny("cross", "bert", num_labels=3)
    ctx = make_context(path, hf_overrides={"problem_type": "multi_label_classification"})
    with serve_in_thread(ctx) as url:
        yield url, path


def test_multi_label_is_sigmoid_per_label(multi_label: tuple[str, Path]) -> None:
    url, path = multi_label
    body = ok(post(url, "/classify", {"input": TEXTS}))
    np.testing.assert_allclose(_probs(body), _sigmoid(_logits(path, TEXTS)), atol=1e-5)
    assert all(d["num_classes"] == 3 for d in body["data"])


@pytest.fixture(scope="module")
def classify_task_cross(cross_dir: Path) -> Iterator[str]:
    """A one-label cross-encoder served with an explicit --task classify."""
    with serve_in_thread(make_context(cross_dir, task="classify")) as url:
        yield url


def test_one_label_classify_task_also_scores(
    classify_task_cross: str, cross_url: str, cross_dir: Path
) -> None:
    body = {"text_1": "a question", "text_2": ["an answer", "another"]}
    got = ok(post(classify_task_cross, "/score", body))["data"]
    want = ok(post(cross_url, "/score", body))["data"]
    assert got == want
    pooled = vectors(ok(post(classify_task_cross, "/pooling", {"input": TEXTS})), "data")
    np.testing.assert_allclose(pooled, _sigmoid(_logits(cross_dir, TEXTS)), atol=1e-5)
