"""POST /rerank, /v1/rerank, /v2/rerank: ordering, top_n, documents, usage, batching."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import CROSS_NAME, assert_error, context_message, ok, post
from tests.fixtures import cluster
from tests.fixtures.several import one_model

QUERY = "which city has the most people"
DOCS = [
    "many people live in large cities",
    "the cat sits on the mat near the door",
    "Paris is the capital and largest city of France",
    "dogs and cats are popular pets",
    "the weather today is sunny and warm",
]


def _reference(model: Any, docs: list[str]) -> np.ndarray:
    return np.asarray(model.predict([(QUERY, d) for d in docs]), dtype=np.float64)


def _check_sorted(results: list[dict[str, Any]]) -> None:
    values = [r["relevance_score"] for r in results]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_orders_by_score(cross_url: str, cross_model: Any, path: str) -> None:
    body = ok(post(cross_url, path, {"query": QUERY, "documents": DOCS},
                   headers={"X-Request-Id": "rr"}))  # fmt: skip
    assert set(body) == {"id", "model", "usage", "results"}
    assert body["id"] == "rerank-rr"
    assert body["model"] == CROSS_NAME
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCS)))
    _check_sorted(results)
    expected = _reference(cross_model, DOCS)
    for r in results:
        assert set(r) == {"index", "document", "relevance_score"}
        assert r["document"] == {"text": DOCS[r["index"]]}
        assert abs(r["relevance_score"] - expected[r["index"]]) < 1e-4
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))


@pytest.mark.parametrize(("top_n", "count"), [(1, 1), (3, 3), (0, 5), (-1, 5), (5, 5), (9, 5),
                                              (None, 5)])  # fmt: skip
def test_top_n(cross_url: str, top_n: int | None, count: int) -> None:
    full = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": DOCS}))["results"]
    body = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": DOCS, "top_n": top_n}))
    assert body["results"] == full[:count]


def test_usage_counts_every_document(cross_url: str, cross_tok: PreTrainedTokenizerBase) -> None:
    expected = sum(len(cross_tok(QUERY, d)["input_ids"]) for d in DOCS)
    body = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": DOCS, "top_n": 1}))
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert len(body["results"]) == 1


def test_return_documents_false(cross_url: str) -> None:
    body = ok(post(cross_url, "/rerank",
                   {"query": QUERY, "documents": DOCS, "return_documents": False}))  # fmt: skip
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])


def test_document_objects(cross_url: str) -> None:
    """Cohere sends {"text": ...} objects (extra keys ignored); strings and objects mix."""
    plain = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": DOCS}))["results"]
    objects = [{"text": d, "id": i} for i, d in enumerate(DOCS)]
    mixed = [d if i % 2 else {"text": d} for i, d in enumerate(DOCS)]
    for documents in (objects, mixed):
        body = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": documents}))
        assert body["results"] == plain


@pytest.mark.parametrize(
    "documents",
    [[{"title": "no text"}], ["ok", {"text": 3}], ["ok", None], [{"text": None}], "one string"],
)
def test_bad_documents_are_400(cross_url: str, documents: Any) -> None:
    resp = post(cross_url, "/rerank", {"query": QUERY, "documents": documents})
    assert_error(resp, 400, param="documents", contains="documents")


def test_empty_documents_is_400(cross_url: str) -> None:
    resp = post(cross_url, "/rerank", {"query": QUERY, "documents": []})
    assert_error(resp, 400, message="At least one text_pair element must be given")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": DOCS}, "query"),
        ({"query": ["a", "b"], "documents": DOCS}, "query"),
        ({"query": QUERY}, "documents"),
        ({"query": QUERY, "documents": DOCS, "top_n": "2"}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, "return_documents"),
        ({"query": QUERY, "documents": DOCS, "normalize": True}, "normalize"),
    ],
)
def test_bad_fields_are_400(cross_url: str, body: dict[str, Any], param: str) -> None:
    assert_error(post(cross_url, "/rerank", body), 400, param=param)


def test_activation_false_gives_logits(cross_url: str, cross_model: Any) -> None:
    import torch

    body = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": DOCS, "activation": False}))
    raw = np.asarray(
        cross_model.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity()),
        dtype=np.float64,
    )
    for r in body["results"]:
        assert abs(r["relevance_score"] - raw[r["index"]]) < 1e-4


def test_over_length_document_is_400(cross_url: str, cross_tok: PreTrainedTokenizerBase) -> None:
    long_doc = "the quick brown fox " * 40
    n = len(cross_tok(QUERY, long_doc)["input_ids"])
    resp = post(cross_url, "/rerank", {"query": QUERY, "documents": ["short", long_doc]})
    assert_error(resp, 400, message=context_message(128, n, "score"))
    body = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": ["short", long_doc],
                                          "truncate_prompt_tokens": 32}))  # fmt: skip
    assert len(body["results"]) == 2


def test_embedding_model_reranks_by_cosine(default_url: str) -> None:
    from sentence_transformers import SentenceTransformer, util

    from poolserve.models.resolve import resolve_model_dir

    model = SentenceTransformer(str(resolve_model_dir(None)), device="cpu")
    expected = util.cos_sim(model.encode(QUERY), model.encode(DOCS))[0].numpy()
    body = ok(post(default_url, "/rerank", {"query": QUERY, "documents": DOCS, "top_n": 3}))
    assert [r["index"] for r in body["results"]] == list(np.argsort(-expected)[:3])
    for r in body["results"]:
        assert abs(r["relevance_score"] - expected[r["index"]]) < 1e-4
    resp = post(default_url, "/rerank", {"query": QUERY, "documents": DOCS, "activation": True})
    assert_error(resp, 400, param="activation")


@one_model
def test_classifier_has_no_rerank(classifier_url: str) -> None:
    resp = post(classifier_url, "/rerank", {"query": QUERY, "documents": DOCS})
    assert_error(resp, 400, message="The model does not support Rerank API")


# -- a large rerank goes through the packer in many batches ---------------------------

BUDGET = 512


class _BatchRecorder:
    """An engine observer that remembers each batch's padded size, then delegates."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.padded: list[int] = []

    def on_batch(self, size: int, tokens: int, padded: int, seconds: float) -> None:
        self.padded.append(padded)
        self.inner.on_batch(size, tokens, padded, seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def small_budget(tiny: Callable[..., Path]) -> Iterator[tuple[str, _BatchRecorder]]:
    cluster.in_process_only("records the in-process engine's batches")
    ctx = make_context(tiny("cross", "bert"), max_num_batched_tokens=BUDGET, max_num_seqs=64)
    recorder = _BatchRecorder(ctx.engine.observer)
    ctx.engine.observer = recorder
    with serve_in_thread(ctx) as url:
        yield url, recorder


def test_thousand_documents_are_split_by_the_token_budget(
    small_budget: tuple[str, _BatchRecorder], cross_model: Any
) -> None:
    url, recorder = small_budget
    rng = np.random.default_rng(0)
    words = "people city large live many cat mat door dog food music time love".split()
    docs = [" ".join(rng.choice(words, size=int(rng.integers(3, 30)))) for _ in range(1000)]
    recorder.padded.clear()
    body = ok(post(url, "/rerank", {"query": QUERY, "documents": docs, "top_n": 10}))
    tokens = body["usage"]["prompt_tokens"]
    assert len(recorder.padded) >= math.ceil(tokens / BUDGET) > 1
    assert max(recorder.padded) <= BUDGET  # never one giant forward
    expected = np.asarray(cross_model.predict([(QUERY, d) for d in docs], batch_size=64))
    top = np.argsort(-expected, kind="stable")[:10]
    got = [r["index"] for r in body["results"]]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in body["results"]], expected[got], atol=1e-4
    )
    np.testing.assert_allclose(expected[got], expected[top], atol=1e-4)
