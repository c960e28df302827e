"""Overload: past --max-concurrent-requests clients get 429 with Retry-After, the others
their right answers, and the server's memory comes back to where it started."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.contract.util import assert_error
from tests.e2e.conftest import ServerProcess
from tests.fixtures.hardening import metric, rss_bytes, wait_until

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 4
CLIENTS = 24
TEXTS = ["the quick brown fox", "jumps over the lazy dog", "a cat sat on the mat", "hello"]


@pytest.fixture(scope="module")
def server(
    tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        [
            str(tiny("st")),
            "--max-concurrent-requests",
            str(LIMIT),
            "--model-workers",
            "1",
            "--max-num-seqs",
            "4",
        ],
        tmp_path_factory.mktemp("overload"),
        env={"POOLSERVE_TEST_DELAY": "0.05", "PYTHONPATH": str(ROOT)},
        module="tests.e2e.launch",
    ).start()
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.terminate(timeout=30)


def post(url: str, body: object) -> requests.Response:
    return requests.post(f"{url}/v1/embeddings", json=body, timeout=60)


def burst(url: str, bodies: list[object]) -> list[requests.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: post(url, b), bodies))


def test_past_the_limit_429_with_retry_after_rest_correct(server: ServerProcess) -> None:
    url = server.url
    reference = np.array([d["embedding"] for d in post(url, {"input": TEXTS}).json()["data"]])
    answers = burst(url, [{"input": TEXTS}] * CLIENTS)
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= LIMIT
    for resp in answers:
        if resp.status_code == 429:
            err = assert_error(resp, 429, contains="--max-queued-requests")
            assert err["type"] == "Overloaded"
            assert int(resp.headers["retry-after"]) >= 1
        else:
            vectors = np.array([d["embedding"] for d in resp.json()["data"]])
            np.testing.assert_allclose(vectors, reference, atol=1e-5)
    # Admission is released: after the burst every request is admitted again.
    wait_until(lambda: metric(url, "poolserve_requests_inflight") == 0, what="inflight drained")
    for _ in range(LIMIT):
        assert post(url, {"input": "after the burst"}).status_code == 200


def test_memory_comes_back_after_hostile_bursts(server: ServerProcess) -> None:
    url, proc = server.url, server.proc
    assert proc is not None
    rounds = [
        [{"input": TEXTS}] * CLIENTS,
        [{"input": "word " * 400_000}] * 8,  # 2 MB of text: tokenized, too long (400)
        [{"input": ["cat"] * 100_000}] * 6,  # too many inputs (413)
        [{"input": [[99_999] * 60] * 500}] * 6,  # ids out of the vocabulary (400)
        [{"input": ["a cat sat on the mat"] * 40}] * 6,  # computed
    ]
    # One warm-up pass grows the pools and caches; memory is measured after it.
    for bodies in rounds:
        burst(url, bodies)
    gc.collect()
    time.sleep(1)
    start = rss_bytes(proc.pid)
    for _ in range(3):
        for bodies in rounds:
            codes = {r.status_code for r in burst(url, bodies)}
            assert codes <= {200, 400, 413, 429}, codes
    wait_until(lambda: metric(url, "poolserve_requests_inflight") == 0, what="inflight drained")
    time.sleep(1)
    end = rss_bytes(proc.pid)
    print(f"server RSS {start / 2**20:.0f} MiB -> {end / 2**20:.0f} MiB")
    assert end < start * 1.10, (start / 2**20, end / 2**20)
    assert post(url, {"input": TEXTS}).status_code == 200
