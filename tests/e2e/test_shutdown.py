"""Shutdown: SIGTERM/SIGINT during a burst finish every accepted request, then exit 0.

The server is ``python -m tests.e2e.launch`` (``poolserve serve`` whose forwards sleep
``POOLSERVE_TEST_DELAY`` seconds), so a burst of requests is still queued when the
signal comes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.contract.util import assert_error
from tests.e2e.conftest import ServerProcess
from tests.fixtures.hardening import metric, wait_until

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 12
TEXTS = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "a cat sat on the mat",
    "hello world",
]


def slow_server(tiny_dir: Path, log_dir: Path, delay: float, *flags: str) -> ServerProcess:
    return ServerProcess(
        [str(tiny_dir), "--max-num-seqs", "2", "--model-workers", "1", *flags],
        log_dir,
        env={"POOLSERVE_TEST_DELAY": str(delay), "PYTHONPATH": str(ROOT)},
        module="tests.e2e.launch",
    ).start()


def embed(url: str, texts: list[str]) -> requests.Response:
    # A new connection per request: nothing rides on a kept-alive socket.
    return requests.post(
        f"{url}/v1/embeddings",
        json={"input": texts},
        headers={"Connection": "close"},
        timeout=60,
    )


def burst(pool: ThreadPoolExecutor, url: str) -> list[Any]:
    """CLIENTS requests of the four texts in a client-specific order."""
    return [pool.submit(embed, url, TEXTS[i % 4 :] + TEXTS[: i % 4]) for i in range(CLIENTS)]


def all_admitted(url: str, futures: list[Any]) -> None:
    """Wait until every request of the burst was admitted (running, or answered), and
    some are still running."""

    def admitted() -> bool:
        inflight = metric(url, "poolserve_requests_inflight")
        return inflight > 0 and inflight + sum(f.done() for f in futures) >= CLIENTS

    wait_until(admitted, timeout=20, what="the whole burst admitted")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_burst_finishes_accepted_work(
    tiny: Callable[..., Path], tmp_path: Path, signum: int
) -> None:
    # 0.4 s a forward: the burst's 24 forwards take ~10 s, so it is still draining when
    # the late client knocks even on a loaded CI machine (0.25 s drained first once).
    server = slow_server(tiny("st"), tmp_path / "srv", 0.4, "--shutdown-grace", "30")
    try:
        url = server.wait_healthy()
        resp = embed(url, TEXTS)
        assert resp.status_code == 200, resp.text
        reference = np.array([d["embedding"] for d in resp.json()["data"]])
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = burst(pool, url)
            all_admitted(url, futures)
            assert server.proc is not None
            server.proc.send_signal(signum)
            signalled = time.monotonic()
            # Stopped accepting: a new client is refused while the burst drains.
            time.sleep(0.5)
            refused_while_draining = False
            if not all(f.done() for f in futures):
                with pytest.raises(requests.ConnectionError):
                    embed(url, ["too late"])
                refused_while_draining = not all(f.done() for f in futures)
            answers = [f.result(timeout=60) for f in futures]
        assert refused_while_draining, "the burst drained before the refusal could be seen"
        for i, resp in enumerate(answers):
            assert resp.status_code == 200, resp.text
            vectors = np.array([d["embedding"] for d in resp.json()["data"]])
            np.testing.assert_allclose(vectors, np.roll(reference, -(i % 4), axis=0), atol=1e-5)
        assert server.wait_exit(timeout=30) == 0
        assert time.monotonic() - signalled < 30
    finally:
        server.terminate(timeout=10)
    assert "Traceback" not in server.stderr, server.stderr[-3000:]


def test_shutdown_grace_bounds_the_wait(tiny: Callable[..., Path], tmp_path: Path) -> None:
    # ~24 forwards of 0.5 s are queued: far more than the 1 s grace period.
    server = slow_server(tiny("st"), tmp_path / "srv", 0.5, "--shutdown-grace", "1")
    try:
        url = server.wait_healthy()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = burst(pool, url)
            all_admitted(url, futures)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert server.wait_exit(timeout=20) == 0
            stopped_in = time.monotonic() - signalled
            answers = [f.result(timeout=10) for f in futures]
        assert stopped_in < 8, stopped_in
        # Every request got a whole answer: its vectors, or 503 in the error shape.
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503}, codes
        assert 503 in codes
        for resp in answers:
            if resp.status_code == 200:
                assert len(resp.json()["data"]) == 4
            else:
                assert_error(resp, 503, contains="shutting down")
    finally:
        server.terminate(timeout=10)
    assert "Traceback" not in server.stderr, server.stderr[-3000:]
