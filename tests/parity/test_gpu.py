"""GPU parity and batching (marker ``gpu``: excluded from the default run).

Run on a CUDA machine with ``python -m pytest -m gpu``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from tests.conftest import make_context, serve_in_thread

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXTS = [f"sentence {i} " + "more words " * (i % 4) for i in range(64)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def st_dir(tiny: Callable[..., Path]) -> Path:
    return tiny("st", "bert")


@pytest.fixture(scope="module")
def reference(st_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(st_dir), device="cpu").encode(TEXTS)


@pytest.mark.parametrize(("dtype", "min_cos"), [("float32", 0.9999), ("auto", 0.999)])
def test_cuda_matches_cpu_sentence_transformers(
    st_dir: Path, reference: np.ndarray, dtype: str, min_cos: float
) -> None:
    ctx = make_context(st_dir, device="cuda", dtype=dtype)
    assert ctx.info.device.startswith("cuda")
    if dtype == "auto":
        assert ctx.info.dtype in ("bfloat16", "float16")
    with serve_in_thread(ctx) as url:
        r = requests.post(url + "/v1/embeddings", json={"input": TEXTS}, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
    assert _cos(got, reference).min() >= min_cos


def test_cuda_concurrent_clients_get_their_own_vectors(st_dir: Path, reference: np.ndarray) -> None:
    ctx = make_context(st_dir, device="cuda", dtype="float32")
    with serve_in_thread(ctx) as url:

        def one(i: int) -> tuple[int, list[float]]:
            r = requests.post(url + "/v1/embeddings", json={"input": TEXTS[i]}, timeout=60)
            return i, r.json()["data"][0]["embedding"]

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(len(TEXTS))))
    for i, vec in results:
        assert _cos(np.array([vec]), reference[i : i + 1])[0] >= 0.9999
