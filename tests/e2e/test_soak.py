"""Soak: minutes of mixed traffic from 32 clients; zero unexpected answers, RSS flat.

The server runs the packaged default model (all-MiniLM-L6-v2, real weights) with the
default flags, so ``--dtype auto``: bfloat16 on a CPU with native bf16, float32
elsewhere; the cross-talk check uses that dtype's bound (tests/fixtures/precision.py).
The memory growth this test guards against comes from torch's activations of many
batch shapes, which a tiny model's are too small to show.

POOLSERVE_SOAK_SECONDS sets the duration (default 120). Memory is compared between the
end of a warm-up (the first 15% of the run, at least 5 s: pools, caches and allocator
arenas fill up) and the end of the run.
"""

from __future__ import annotations

import base64
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from poolserve.backends.torch.device import resolve_dtype
from tests.e2e.conftest import ServerProcess
from tests.fixtures.hardening import rss_bytes
from tests.fixtures.precision import assert_same_vectors
from tests.fixtures.tiny_models import WORDS

SECONDS = float(os.environ.get("POOLSERVE_SOAK_SECONDS", "120"))
CLIENTS = 32
BATCH_LIMIT = 64
REFERENCE = "the quick brown fox jumps over the lazy dog"


def text(rng: random.Random, most: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, most)))


class Traffic:
    """The request mix; each call sends one request and checks its answer."""

    def __init__(self, url: str, reference: np.ndarray, dtype: str) -> None:
        self.url = url
        self.reference = reference
        self.dtype = dtype

    def embeddings(self, s: requests.Session, rng: random.Random) -> None:
        texts = [text(rng) for _ in range(rng.randint(1, 16))]
        fmt = rng.choice(["float", "base64"])
        body = self.expect(s, "/v1/embeddings", {"input": texts, "encoding_format": fmt}, 200)
        assert len(body["data"]) == len(texts)
        for item in body["data"]:
            vec = item["embedding"]
            if fmt == "base64":
                vec = np.frombuffer(base64.b64decode(vec), dtype="<f4")
            assert abs(np.linalg.norm(vec) - 1) < 1e-4

    def reference_check(self, s: requests.Session, rng: random.Random) -> None:
        # The same text among others: always the same vector (no cross-talk).
        texts = [text(rng) for _ in range(rng.randint(0, 6))]
        at = rng.randint(0, len(texts))
        texts.insert(at, REFERENCE)
        body = self.expect(s, "/v1/embeddings", {"input": texts}, 200)
        got = np.array(body["data"][at]["embedding"])
        assert_same_vectors(got, self.reference, self.dtype)

    def token_ids(self, s: requests.Session, rng: random.Random) -> None:
        ids = [[rng.randint(5, 150) for _ in range(rng.randint(1, 60))] for _ in range(4)]
        body = self.expect(s, "/pooling", {"input": ids}, 200)
        assert len(body["data"]) == 4

    def tokenize(self, s: requests.Session, rng: random.Random) -> None:
        body = self.expect(s, "/tokenize", {"prompt": text(rng)}, 200)
        back = self.expect(s, "/detokenize", {"tokens": body["tokens"]}, 200)
        assert isinstance(back["prompt"], str)

    def score(self, s: requests.Session, rng: random.Random) -> None:
        docs = [text(rng, 20) for _ in range(rng.randint(1, 8))]
        resp = s.post(f"{self.url}/rerank", json={"query": text(rng, 10), "documents": docs})
        if resp.status_code == 404:  # no /rerank route
            return
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["results"]) == len(docs)

    def models(self, s: requests.Session, rng: random.Random) -> None:
        resp = s.get(f"{self.url}/v1/models", timeout=30)
        assert resp.status_code == 200, resp.text
        assert s.get(f"{self.url}/metrics", timeout=30).status_code == 200

    def bad_requests(self, s: requests.Session, rng: random.Random) -> None:
        kind = rng.randrange(5)
        if kind == 0:
            resp = s.post(
                f"{self.url}/v1/embeddings",
                data=b'{"input": [',
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            assert resp.status_code == 400, resp.text
        elif kind == 1:
            self.expect(s, "/v1/embeddings", {"input": "word " * 1000}, 400)  # over-length
        elif kind == 2:
            self.expect(s, "/v1/embeddings", {"input": "x", "model": "nope"}, 404)
        elif kind == 3:
            self.expect(s, "/v1/embeddings", {"input": ["a"] * (BATCH_LIMIT + 1)}, 413)
        else:
            self.expect(s, "/detokenize", {"tokens": [10**9]}, 400)

    def expect(self, s: requests.Session, path: str, body: Any, status: int) -> Any:
        resp = s.post(f"{self.url}{path}", json=body, timeout=60)
        assert resp.status_code == status, (path, resp.status_code, resp.text[:300])
        return resp.json()


@pytest.mark.slow
def test_soak(tmp_path: Path) -> None:
    server = ServerProcess(
        ["--max-client-batch-size", str(BATCH_LIMIT), "--disable-log-requests"],
        tmp_path / "soak",
        dtype=None,  # the user's default path: auto
    ).start()
    dtype = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    try:
        url = server.wait_healthy()
        assert server.proc is not None
        assert f"dtype={dtype}" in server.stderr, server.stderr[-2000:]
        reference = np.array(
            requests.post(f"{url}/v1/embeddings", json={"input": REFERENCE}, timeout=30).json()[
                "data"
            ][0]["embedding"]
        )
        traffic = Traffic(url, reference, dtype)
        actions: list[tuple[Callable[[requests.Session, random.Random], None], int]] = [
            (traffic.embeddings, 6),
            (traffic.reference_check, 3),
            (traffic.token_ids, 2),
            (traffic.tokenize, 2),
            (traffic.score, 2),
            (traffic.models, 1),
            (traffic.bad_requests, 2),
        ]
        weighted = [a for a, w in actions for _ in range(w)]
        started = time.monotonic()
        warm_until = started + max(5.0, 0.15 * SECONDS)
        stop_at = started + SECONDS
        errors: list[str] = []
        counts = [0] * CLIENTS
        lock = threading.Lock()

        def client(i: int) -> None:
            rng = random.Random(i)
            with requests.Session() as session:
                while time.monotonic() < stop_at and len(errors) < 20:
                    action = rng.choice(weighted)
                    try:
                        action(session, rng)
                        counts[i] += 1
                    except Exception as exc:  # every failure is an unexpected answer
                        with lock:
                            errors.append(f"{action.__name__}: {exc!r}"[:500])

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            time.sleep(max(0.0, warm_until - time.monotonic()))
            warm_rss = rss_bytes(server.proc.pid)
            for f in futures:
                f.result(timeout=SECONDS + 120)
        end_rss = rss_bytes(server.proc.pid)
        total = sum(counts)
        print(
            f"soak ({dtype}): {total} requests in {time.monotonic() - started:.0f} s "
            f"from {CLIENTS} clients; RSS {warm_rss / 2**20:.0f} -> {end_rss / 2**20:.0f} MiB"
        )
        assert not errors, errors
        assert total > CLIENTS * 2
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        # Growth seen here before: the oneDNN Linear layers' per-shape caches (now behind
        # --onednn-linear) and glibc keeping freed activations (engine/heap.py trims).
        assert end_rss < warm_rss * 1.10, (warm_rss / 2**20, end_rss / 2**20)
    finally:
        assert server.terminate(timeout=60) == 0
