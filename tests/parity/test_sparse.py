"""Sparse (SPLADE) models equal sentence-transformers' SparseEncoder (issue 14, item 2).

A tiny random BERT masked-LM saved as a SparseEncoder folder (MLMTransformer +
SpladePooling) is served; its vectors (one weight per vocabulary id) on
/v1/embeddings and /pooling, and TEI's /embed_sparse pairs, equal
``SparseEncoder.encode`` on the same weights (float32, 1e-4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import make_context, serve_in_thread

TEXTS = ["the cat sits on the mat", "Paris is the capital of France", "a", "dogs dogs dogs"]
VARIANTS = {"max-relu": ("max", "relu"), "sum-log1p_relu": ("sum", "log1p_relu")}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def sparse(request: pytest.FixtureRequest, tiny: Callable[..., Path]) -> Iterator[tuple[str, Any]]:
    from sentence_transformers import SparseEncoder

    pooling, activation = VARIANTS[request.param]
    path = tiny("sparse", pooling=pooling, activation=activation)
    reference = SparseEncoder(str(path), device="cpu")
    with serve_in_thread(make_context(path, dtype="float32", backend="auto")) as url:
        yield url, reference


def _want(reference: Any, texts: list[str]) -> np.ndarray:
    return reference.encode(texts, convert_to_tensor=True).to_dense().float().numpy()


def test_embeddings_equal_sparse_encoder(sparse: tuple[str, Any]) -> None:
    url, reference = sparse
    resp = requests.post(url + "/v1/embeddings", json={"input": TEXTS}, timeout=60)
    assert resp.status_code == 200, resp.text
    got = np.array([d["embedding"] for d in resp.json()["data"]])
    want = _want(reference, TEXTS)
    assert got.shape == want.shape == (len(TEXTS), reference.get_sentence_embedding_dimension())
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got >= 0).all()
    pooled = requests.post(url + "/pooling", json={"input": TEXTS[:2]}, timeout=60).json()
    np.testing.assert_allclose([d["data"] for d in pooled["data"]], want[:2], atol=1e-4)


def test_tei_embed_sparse_lists_the_nonzero_weights(sparse: tuple[str, Any]) -> None:
    url, reference = sparse
    resp = requests.post(url + "/embed_sparse", json={"inputs": TEXTS[:2]}, timeout=60)
    assert resp.status_code == 200, resp.text
    want = _want(reference, TEXTS[:2])
    for pairs, row in zip(resp.json(), want, strict=True):
        assert [p["index"] for p in pairs] == np.nonzero(row)[0].tolist()
        np.testing.assert_allclose([p["value"] for p in pairs], row[row != 0], atol=1e-4)
    info = requests.get(url + "/info", timeout=10).json()
    assert info["model_type"] == {"embedding": {"pooling": "splade"}}


def test_what_a_sparse_model_does_not_serve(sparse: tuple[str, Any]) -> None:
    url, _ = sparse
    score = requests.post(url + "/score", json={"text_1": "a", "text_2": "b"}, timeout=10)
    assert score.status_code == 400
    assert "does not support Score API" in score.json()["error"]["message"]
    dims = requests.post(url + "/v1/embeddings", json={"input": "a", "dimensions": 8}, timeout=10)
    assert dims.status_code == 400
    assert "matryoshka" in dims.json()["error"]["message"]


def test_a_dense_model_has_no_sparse_weights(default_url: str) -> None:
    resp = requests.post(default_url + "/embed_sparse", json={"inputs": "a"}, timeout=10)
    assert resp.status_code == 424
    assert "SPLADE" in resp.json()["error"]


def test_sparse_models_refuse_other_tasks_and_pooler_keys(tiny: Callable[..., Path]) -> None:
    from poolserve.errors import ModelLoadError

    path = tiny("sparse", pooling="max", activation="relu")
    with pytest.raises(ModelLoadError, match="serves the embed task only"):
        make_context(path, task="classify")
    with pytest.raises(ModelLoadError, match="enable_chunked_processing does not apply"):
        make_context(path, override_pooler_config={"enable_chunked_processing": True})


def test_prompt_names_of_the_folder(sparse: tuple[str, Any]) -> None:
    url, reference = sparse
    # SparseEncoder.save writes the prompts "query" and "document" (both empty).
    resp = requests.post(url + "/embed_sparse", json={"inputs": "a b", "prompt_name": "query"})
    assert resp.status_code == 200, resp.text
    want = _want(reference, ["a b"])[0]
    np.testing.assert_allclose([p["value"] for p in resp.json()[0]], want[want != 0], atol=1e-4)
