"""Long inputs with chunked processing (--pooler-config enable_chunked_processing).

The acceptance check of issue 13: a ~4,000-token text on the packaged MiniLM (window
256) equals, at float32, the combination computed here independently from
sentence-transformers on the same windows: the text's token ids (special tokens as the
tokenizer puts them) cut into consecutive windows of 256, each window through the ST
model (Transformer -> mean pooling -> Normalize), the window vectors averaged weighted
by their token counts and L2-normalized again (vLLM's rule, docs/long-inputs.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import torch

from poolserve.models.resolve import resolve_model_dir
from tests.conftest import make_context, serve_in_thread

WINDOW = 256
MAX_EMBED_LEN = 6000
WORDS = (
    "retrieval augmented generation splits documents into passages that an embedding "
    "model maps to vectors so a query can find the nearest ones quickly and the answer "
    "cites them; long reports contracts and manuals rarely fit one window"
).split()


def _long_text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


@pytest.fixture(scope="module")
def chunked_url() -> Iterator[str]:
    ctx = make_context(
        None,
        dtype="float32",
        override_pooler_config={"enable_chunked_processing": True, "max_embed_len": MAX_EMBED_LEN},
    )
    with serve_in_thread(ctx) as url:
        yield url


@pytest.fixture(scope="module")
def st_model() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_model_dir(None)), device="cpu")


def _st_windows(st_model: Any, ids: list[int]) -> np.ndarray:
    """The reference: ST on each window of ``ids``, combined by token count, renormalized."""
    vectors, weights = [], []
    for start in range(0, len(ids), WINDOW):
        window = torch.tensor([ids[start : start + WINDOW]])
        features = {"input_ids": window, "attention_mask": torch.ones_like(window)}
        if "token_type_ids" in st_model.tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(window)
        with torch.no_grad():
            out = st_model(features)["sentence_embedding"][0].numpy().astype(np.float64)
        vectors.append(out)
        weights.append(window.shape[1])
    mean = np.average(np.stack(vectors), axis=0, weights=weights)
    return mean / np.linalg.norm(mean)


def _embed(url: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(url + "/v1/embeddings", json=body, timeout=120)


def test_4000_tokens_equal_sentence_transformers_on_the_same_windows(
    chunked_url: str, st_model: Any
) -> None:
    text = _long_text(3650)
    ids = st_model.tokenizer(text)["input_ids"]
    assert 4000 <= len(ids) <= MAX_EMBED_LEN, len(ids)
    resp = _embed(chunked_url, {"input": text})
    assert resp.status_code == 200, resp.text
    got = np.array(resp.json()["data"][0]["embedding"])
    want = _st_windows(st_model, ids)
    cosine = float(got @ want / np.linalg.norm(got))
    assert cosine >= 0.9999, cosine
    # usage counts every token embedded: the whole text, special tokens included.
    assert resp.json()["usage"]["prompt_tokens"] == len(ids)


def test_chunking_off_is_vllms_400(default_url: str) -> None:
    resp = _embed(default_url, {"input": _long_text(3400)})
    assert resp.status_code == 400
    assert "maximum context length is 256 tokens" in resp.json()["error"]["message"]


def test_over_max_embed_len_is_400(chunked_url: str) -> None:
    resp = _embed(chunked_url, {"input": _long_text(MAX_EMBED_LEN + 500)})
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert f"maximum context length is {MAX_EMBED_LEN} tokens" in message


def test_short_inputs_are_unchanged_and_batches_mix(
    chunked_url: str, default_url: str, st_model: Any
) -> None:
    short = ["a short query", "another one"]
    long = _long_text(700, seed=3)
    chunked = _embed(chunked_url, {"input": [short[0], long, short[1]]}).json()
    plain = _embed(default_url, {"input": short}).json()
    got = [d["embedding"] for d in chunked["data"]]
    for row, ref in zip((got[0], got[2]), plain["data"], strict=True):
        assert np.allclose(row, ref["embedding"], atol=1e-6)
    want = _st_windows(st_model, st_model.tokenizer(long)["input_ids"])
    assert float(np.dot(got[1], want)) >= 0.9999


def test_token_ids_and_pooling_and_score_chunk_too(chunked_url: str, st_model: Any) -> None:
    text = _long_text(1200, seed=5)
    ids = st_model.tokenizer(text)["input_ids"]
    by_text = np.array(_embed(chunked_url, {"input": text}).json()["data"][0]["embedding"])
    by_ids = _embed(chunked_url, {"input": ids}).json()
    assert np.allclose(by_ids["data"][0]["embedding"], by_text, atol=1e-6)
    assert by_ids["usage"]["prompt_tokens"] == len(ids)
    pooled = requests.post(chunked_url + "/pooling", json={"input": text}, timeout=60).json()
    assert np.allclose(pooled["data"][0]["data"], by_text, atol=1e-6)
    query = "what do embedding models do"
    q = np.array(_embed(chunked_url, {"input": query}).json()["data"][0]["embedding"])
    score = requests.post(
        chunked_url + "/score", json={"text_1": query, "text_2": text}, timeout=60
    ).json()
    assert score["data"][0]["score"] == pytest.approx(float(q @ by_text), abs=1e-5)


def test_truncation_still_applies_under_chunking(chunked_url: str, st_model: Any) -> None:
    text = _long_text(1200, seed=7)
    resp = _embed(chunked_url, {"input": text, "truncate_prompt_tokens": 600}).json()
    assert resp["usage"]["prompt_tokens"] == 600
    ids = st_model.tokenizer(text, truncation=True, max_length=600)["input_ids"]
    want = _st_windows(st_model, ids)
    assert float(np.dot(resp["data"][0]["embedding"], want)) >= 0.9999


def test_per_token_outputs_do_not_chunk(chunked_url: str) -> None:
    resp = requests.post(
        chunked_url + "/pooling",
        json={"input": _long_text(1200), "task": "token_embed"},
        timeout=60,
    )
    assert resp.status_code == 400
    assert "maximum context length is 256 tokens" in resp.json()["error"]["message"]


def test_offline_api_chunks(st_model: Any) -> None:
    from poolserve.offline import PoolingModel

    text = _long_text(900, seed=11)
    with PoolingModel(
        None,
        dtype="float32",
        override_pooler_config={"enable_chunked_processing": True},
    ) as model:
        got = model.embed(text)[0]
    want = _st_windows(st_model, st_model.tokenizer(text)["input_ids"])
    assert float(np.dot(got, want)) >= 0.9999


def test_file_job_chunks(st_model: Any, tmp_path: Any) -> None:
    from poolserve.cli import main

    texts = [_long_text(900, seed=13), "a short line"]
    (inp := tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "v.npy"
    argv = ["embed", "--dtype", "float32", "-i", str(inp), "-o", str(out), "--no-progress",
            "--pooler-config.enable_chunked_processing", "true"]  # fmt: skip
    assert main(argv) == 0
    got = np.load(out)
    want = _st_windows(st_model, st_model.tokenizer(texts[0])["input_ids"])
    assert float(np.dot(got[0], want)) >= 0.9999
    assert len(st_model.tokenizer(texts[0])["input_ids"]) > 2 * WINDOW
