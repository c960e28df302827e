"""No batching cross-talk: concurrent clients each get exactly their own vectors.

Run in float32 (the same vector whatever the batch) and in bfloat16 (the same within
the batch-invariance bound of tests/fixtures/precision.py).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.fixtures.precision import assert_same_vectors
from tests.fixtures.tiny_models import WORDS

CLIENTS = 32
ROUNDS = 4


def make_text(rng: random.Random, max_words: int = 55) -> str:
    """A random text of 1..max_words corpus words (each one token): within the 64 limit."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))


def embed(session: requests.Session, url: str, texts: list[str]) -> np.ndarray:
    resp = session.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


@pytest.fixture(scope="module")
def client_texts() -> list[list[str]]:
    """Per client 1-4 texts of different lengths; every text unique across clients."""
    rng = random.Random(2024)
    seen: set[str] = set()
    out = []
    for i in range(CLIENTS):
        texts: list[str] = []
        while len(texts) < 1 + i % 4:
            text = make_text(rng)
            if text not in seen:
                seen.add(text)
                texts.append(text)
        out.append(texts)
    return out


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, np.ndarray]]:
    """Per server URL: each text embedded by itself (filled by ``alone``)."""
    return {}


@pytest.fixture
def alone(
    tiny_server: tuple[str, str],
    client_texts: list[list[str]],
    references: dict[str, dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Each text embedded by itself, one request at a time (the reference)."""
    url, _ = tiny_server
    if url not in references:
        with requests.Session() as session:
            references[url] = {
                t: embed(session, url, [t])[0] for texts in client_texts for t in texts
            }
    return references[url]


def test_concurrent_clients_get_their_own_vectors(
    tiny_server: tuple[str, str], client_texts: list[list[str]], alone: dict[str, np.ndarray]
) -> None:
    tiny_url, dtype = tiny_server

    def client(i: int) -> list[tuple[list[str], np.ndarray]]:
        rng = random.Random(i)
        got = []
        with requests.Session() as session:
            for _ in range(ROUNDS):
                texts = client_texts[i][:]
                rng.shuffle(texts)  # different order each round
                got.append((texts, embed(session, tiny_url, texts)))
        return got

    shared_before = batches_over(tiny_url, 4)
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    # Requests really shared forwards: some batch held more than one request's 4 texts.
    assert batches_over(tiny_url, 4) > shared_before
    checked = 0
    for rounds in results:
        for texts, vectors in rounds:
            expected = np.stack([alone[t] for t in texts])
            assert_same_vectors(vectors, expected, dtype)
            checked += len(texts)
    assert checked == ROUNDS * sum(len(t) for t in client_texts)


def batches_over(url: str, size: float) -> float:
    """How many forwards so far ran more than ``size`` sequences (from /metrics)."""
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    counts: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith("poolserve_batch_size_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            counts[float(le)] = float(line.rsplit(" ", 1)[1])
    assert counts, metrics[:2000]
    at_most = max((c for le, c in counts.items() if le <= size), default=0.0)
    return counts[float("inf")] - at_most


@pytest.mark.slow
def test_one_request_with_1000_inputs(
    tiny_server: tuple[str, str], client_texts: list[list[str]], alone: dict[str, np.ndarray]
) -> None:
    tiny_url, dtype = tiny_server
    pool = [t for texts in client_texts for t in texts]
    rng = random.Random(5)
    inputs = [rng.choice(pool) for _ in range(1000)]
    with requests.Session() as session:
        vectors = embed(session, tiny_url, inputs)
    assert vectors.shape == (1000, 32)
    expected = np.stack([alone[t] for t in inputs])
    assert_same_vectors(vectors, expected, dtype)
