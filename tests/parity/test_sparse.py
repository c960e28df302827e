"""Sparse (SPLADE) models equal sentence-transformers' SparseEncoder (issue 14, item 2).

A tiny random BERT masked-LM saved as a SparseEncoder folder (MLMTransformer +
SpladePooling) is served; its vectors (one weight per vocabulary id) on
/v1/embeddings and /pooling, and TEI's /embed_sparse pairs, equal
``SparseEncoder.encode`` on the same weights (float32, 1e-4). vLLM's SPLADE launch line
(a plain masked-LM folder, --hf-overrides BertSpladeSparseEmbeddingModel) equals vLLM
0.33's pooler computed here.
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


SPLADE_OVERRIDE = {"architectures": ["BertSpladeSparseEmbeddingModel"]}


def _mlm_copy(tiny: Callable[..., Path], tmp_path: Path, **ids: int) -> Path:
    """The plain BertForMaskedLM folder behind the tiny SparseEncoder, its config
    given ``ids`` (cls_token_id / sep_token_id)."""
    import json
    import shutil

    sparse_dir = tiny("sparse", pooling="max", activation="relu")
    out = tmp_path / "mlm"
    shutil.copytree(sparse_dir.parent / f"{sparse_dir.name}-mlm", out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **ids}))
    return out


def _vllm_splade(path: Path, texts: list[str], drop_ends: bool) -> np.ndarray:
    """vLLM 0.33's SPLADE pooler, computed here: max over the kept tokens of
    log1p(relu(MLM logits)); with ``drop_ends`` the first and last token left out."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForMaskedLM.from_pretrained(str(path), dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            logits = model(**tok(text, return_tensors="pt")).logits[0]
            kept = logits[1:-1] if drop_ends else logits
            rows.append(torch.log1p(torch.relu(kept)).amax(dim=0).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("named", [False, True])
def test_vllm_splade_launch_line(tiny: Callable[..., Path], tmp_path: Path, named: bool) -> None:
    """--hf-overrides BertSpladeSparseEmbeddingModel on a plain masked-LM folder: vLLM's
    pooler, which leaves out [CLS] / [SEP] only when the config names their ids."""
    ids = {"cls_token_id": 2, "sep_token_id": 3} if named else {}
    path = _mlm_copy(tiny, tmp_path, **ids)
    ctx = make_context(path, hf_overrides=SPLADE_OVERRIDE)
    want = _vllm_splade(path, TEXTS, drop_ends=named)
    with serve_in_thread(ctx) as url:
        resp = requests.post(url + "/v1/embeddings", json={"input": TEXTS}, timeout=60)
        assert resp.status_code == 200, resp.text
        got = np.array([d["embedding"] for d in resp.json()["data"]])
        np.testing.assert_allclose(got, want, atol=1e-4)
        pairs = requests.post(url + "/embed_sparse", json={"inputs": TEXTS[0]}, timeout=60)
        assert [p["index"] for p in pairs.json()[0]] == np.nonzero(want[0])[0].tolist()
    if named:  # the ends made a difference
        assert not np.allclose(want, _vllm_splade(path, TEXTS, drop_ends=False), atol=1e-4)
    else:  # no ids in the config: the same weights as sentence-transformers
        from sentence_transformers import SparseEncoder

        reference = SparseEncoder(str(tiny("sparse", pooling="max", activation="relu")))
        np.testing.assert_allclose(want, _want(reference, TEXTS), atol=1e-4)


def test_vllm_splade_launch_line_is_bert_only(tiny: Callable[..., Path]) -> None:
    from poolserve.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="BERT masked LM"):
        make_context(tiny("encoder", "roberta"), hf_overrides=SPLADE_OVERRIDE)
