"""What late-interaction (ColBERT) models refuse, and what other models refuse of
late interaction: 400s in the OpenAI error shape naming what is missing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import assert_error, ok, post
from tests.fixtures.several import one_model


@pytest.fixture(scope="module")
def colbert_url(tiny: Callable[..., Path]) -> Iterator[str]:
    with serve_in_thread(make_context(tiny("colbert", layout="pylate"))) as url:
        yield url


@one_model
def test_a_colbert_model_has_no_pooled_output(colbert_url: str) -> None:
    resp = post(colbert_url, "/pooling", {"input": "hi", "task": "embed"})
    assert_error(resp, 400, contains=("no pooled output", "token_embed"), param="task")
    resp = post(colbert_url, "/pooling", {"input": "hi", "dimensions": 8})
    assert_error(resp, 400, contains="matryoshka", param="dimensions")
    resp = post(colbert_url, "/v1/embeddings", {"input": "hi", "dimensions": 8})
    assert_error(resp, 400, contains="matryoshka", param="dimensions")
    resp = post(colbert_url, "/pooling", {"input": "hi", "input_type": "passage"})
    assert_error(resp, 400, contains="input_type must be one of query, document")
    resp = post(colbert_url, "/pooling", {"input": "hi", "softmax": True})
    assert_error(resp, 400, contains="late-interaction", param="softmax")
    resp = post(colbert_url, "/classify", {"input": "hi"})
    assert_error(resp, 400, contains="does not support Classification API")
    resp = post(colbert_url, "/score", {"text_1": "a", "text_2": "b", "activation": True})
    assert_error(resp, 400, contains="MaxSim", param="activation")
    tei = post(colbert_url, "/embed", {"inputs": "hi"})
    assert tei.status_code in (400, 422) and "no pooled embedding" in tei.text, tei.text
    cohere = post(colbert_url, "/v2/embed", {"texts": ["hi"], "input_type": "search_query"})
    assert_error(cohere, 400, contains="no pooled embedding")


def test_a_colbert_model_scores_and_pools(colbert_url: str) -> None:
    body = ok(post(colbert_url, "/pooling", {"input": ["a b", "c"], "input_type": "query"}))
    assert [len(d["data"]) for d in body["data"]] == [12, 12]  # augmented to query_length
    docs = ok(post(colbert_url, "/pooling", {"input": "a b"}))["data"][0]["data"]
    assert len(docs) == 5  # [CLS] [D] a b [SEP]
    tei = post(colbert_url, "/embed_all", {"inputs": "a b"})
    assert tei.status_code == 200, tei.text
    assert len(tei.json()[0]) == 5  # the same tokens, raw projections
    body = ok(post(colbert_url, "/rerank", {"query": "a", "documents": ["a b", "c"]}))
    assert sorted(r["index"] for r in body["results"]) == [0, 1]


def test_other_models_have_no_late_interaction(
    tiny_url: str, classifier_url: str, cross_url: str
) -> None:
    for url in (tiny_url, classifier_url):
        resp = post(url, "/pooling", {"input": "hi", "input_type": "query"})
        assert_error(resp, 400, contains="no query and document markers", param="input_type")
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "input_type": "document"})
    assert_error(resp, 400, contains="late-interaction (ColBERT)", param="input_type")
    for url in (classifier_url, cross_url):
        resp = post(url, "/pooling", {"input": "hi", "task": "token_embed"})
        assert_error(resp, 400, contains="it has no per-token vectors", param="task")
