"""Sparse outputs asked of models without them, and bge-m3's wire rules (issue 14).

One rule (``ModelInfo.sparse_problem``) answers both surfaces for a model without a
sparse head: /pooling ``task: "token_classify"`` on an embedding model is a 400 naming
what it lacks; TEI's /embed_sparse is TEI's 424 (its status for a model of the wrong
kind) with TEI's words followed by the same explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import assert_error, assert_tei_error, post

LACKS = "no sparse head"


@pytest.fixture(scope="module")
def m3_url(tiny: Callable[..., Path]) -> Iterator[str]:
    with serve_in_thread(make_context(tiny("bge-m3"))) as url:
        yield url


def test_token_classify_on_a_dense_model_names_what_it_lacks(default_url: str) -> None:
    resp = post(default_url, "/pooling", {"input": "a", "task": "token_classify"})
    err = assert_error(resp, 400, contains=(LACKS, "sparse_linear.pt", "SPLADE"), param="task")
    assert "supported: embed, token_embed" in err["message"]


def test_embed_sparse_on_a_dense_model_names_what_it_lacks(default_url: str) -> None:
    resp = post(default_url, "/embed_sparse", {"inputs": ["a", "b"]})
    message = assert_tei_error(resp, 424, "Backend")
    assert message.startswith("Backend error: Model is not an embedding model with SPLADE pooling")
    assert LACKS in message and "sparse_linear.pt" in message


def test_a_classifier_has_no_sparse_weights_either(classifier_url: str) -> None:
    message = assert_tei_error(post(classifier_url, "/embed_sparse", {"inputs": "a"}), 424)
    assert LACKS in message


def test_bge_m3_lexical_task_rules(m3_url: str) -> None:
    body = {"input": "a b", "task": "token_classify"}
    assert_error(post(m3_url, "/pooling", {**body, "dimensions": 8}), 400, param="dimensions")
    assert_error(post(m3_url, "/pooling", {**body, "normalize": True}), 400, param="normalize")
    # vLLM serves embed&token_classify only through an IO-processor plugin; so no here.
    combined = post(m3_url, "/pooling", {"input": "a", "task": "embed&token_classify"})
    assert_error(combined, 400, contains="token_classify", param="task")
    assert post(m3_url, "/embed_sparse", {"inputs": []}).status_code == 400


def test_bge_m3_token_embed_is_colbert_and_embed_all_hidden(m3_url: str) -> None:
    """/pooling token_embed: the colbert vectors (BOS row out, as vLLM); TEI /embed_all:
    every token's hidden state (as TEI answers an XLM-R). Values: parity/test_bge_m3.py."""
    raw = post(m3_url, "/pooling", {"input": "a b", "task": "token_embed", "normalize": False})
    assert raw.status_code == 200, raw.text
    rows = raw.json()["data"][0]["data"]
    assert len(rows) == 4 and len(rows[0]) == 32  # "a b" is 5 tokens; colbert_linear's width
    every = post(m3_url, "/embed_all", {"inputs": "a b"})
    assert every.status_code == 200, every.text
    assert len(every.json()[0]) == 5 and every.json()[0][1:] != rows
    body = {"input": "a", "task": "token_embed"}
    assert_error(post(m3_url, "/pooling", {**body, "dimensions": 8}), 400, param="dimensions")
    assert_error(post(m3_url, "/pooling", {**body, "activation": True}), 400, param="activation")
