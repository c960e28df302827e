"""Faults: a failing forward, a dead engine, timeouts and clients that hang up.

Most tests run a server in-process around a tiny model whose backend is wrapped by
:class:`tests.fixtures.hardening.ControlledBackend` (held, slowed or poisoned forwards);
the last one runs ``poolserve serve`` as a subprocess with a poisoned backend and reads
its log.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests

from poolserve.config import ServerConfig
from poolserve.serving.context import ServingContext
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import assert_error, ok
from tests.e2e.conftest import ServerProcess
from tests.fixtures.hardening import ControlledBackend, control, metric, wait_until

ROOT = Path(__file__).resolve().parents[2]
POISON = 7  # a token id the wrapper fails on
TIMEOUT = 30


def ids_input(tags: list[int], poison_at: int | None = None) -> list[list[int]]:
    """One token-id sequence per tag: ``[tag, 20, 21]`` (``POISON`` in one if asked)."""
    return [[tag, 20, POISON if i == poison_at else 21] for i, tag in enumerate(tags)]


def post(url: str, body: Any, rid: str | None = None, path: str = "/v1/embeddings") -> Any:
    headers = {"X-Request-Id": rid} if rid else {}
    return requests.post(url + path, json=body, headers=headers, timeout=TIMEOUT)


def hang_up_request(url: str, body: dict[str, Any]) -> socket.socket:
    """Send a POST on a raw socket and return it unread (the caller closes it)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    data = orjson.dumps(body)
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock.sendall(head + data)
    return sock


@pytest.fixture(scope="module")
def held_ctx(tiny: Callable[..., Path]) -> ServingContext:
    """A tiny model with one model worker (so one held forward holds everything)."""
    return make_context(tiny("st"), model_workers=1, max_num_seqs=4)


@pytest.fixture(scope="module")
def held_server(held_ctx: ServingContext) -> Iterator[tuple[str, ControlledBackend]]:
    wrapper = control(held_ctx)
    with serve_in_thread(held_ctx, ServerConfig(request_timeout=2.0)) as url:
        yield url, wrapper


@pytest.fixture
def held(held_server: tuple[str, ControlledBackend]) -> Iterator[tuple[str, ControlledBackend]]:
    """The module's server with a fresh wrapper state; the gate is always opened after."""
    url, wrapper = held_server
    wrapper.gate, wrapper.poison, wrapper.delay = None, None, 0.0
    wrapper.batches.clear()
    wrapper.entered.clear()
    try:
        yield url, wrapper
    finally:
        if wrapper.gate is not None:
            wrapper.gate.set()
        wrapper.gate, wrapper.poison = None, None


def hold(wrapper: ControlledBackend) -> threading.Event:
    gate = threading.Event()
    wrapper.entered.clear()
    wrapper.gate = gate
    return gate


# -- a failing forward fails only its batch ----------------------------------------------


def test_only_requests_in_a_failing_batch_fail(
    held: tuple[str, ControlledBackend], held_ctx: ServingContext, caplog: pytest.LogCaptureFixture
) -> None:
    url, wrapper = held
    tags_all = list(range(100, 124))
    reference = dict(zip(tags_all, embed_ids(url, tags_all), strict=True))
    wrapper.batches.clear()
    gate = hold(wrapper)
    wrapper.poison = POISON
    # Pile twelve requests (two sequences each, three of them poisoned) up behind a held
    # forward, so the packer mixes them into shared batches when the gate opens.
    plans = [
        (f"fault-{i}", [100 + 2 * i, 101 + 2 * i], 1 if i % 4 == 1 else None) for i in range(12)
    ]
    with caplog.at_level(logging.INFO, logger="poolserve"), ThreadPoolExecutor(13) as pool:
        first = pool.submit(post, url, {"input": ids_input([99])})
        assert wrapper.entered.wait(10)
        futures = [
            pool.submit(post, url, {"input": ids_input(tags, bad)}, rid) for rid, tags, bad in plans
        ]
        wait_until(lambda: held_ctx.engine.queued_sequences == 24, what="all queued")
        gate.set()
        answers = [f.result() for f in futures]
        ok(first.result())
    failed_seqs = {s for seqs, failing in wrapper.batches if failing for s in seqs}
    assert failed_seqs, "no batch failed"
    for (rid, tags, bad), resp in zip(plans, answers, strict=True):
        seqs = {tuple(x) for x in ids_input(tags, bad)}
        if seqs & failed_seqs:  # a batch holding one of its sequences failed
            err = assert_error(resp, 500)
            assert err["type"] == "InternalServerError"
            assert rid in err["message"] and "injected fault" in err["message"]
            assert f"request {rid} failed" in caplog.text
            assert f"id={rid} method=POST endpoint=/v1/embeddings status=500" in caplog.text
        else:
            vectors = np.array([d["embedding"] for d in ok(resp)["data"]])
            np.testing.assert_allclose(vectors, [reference[t] for t in tags], atol=1e-5)
    assert sum(r.status_code == 200 for r in answers) >= 6
    # The engine goes on: the next requests succeed.
    wrapper.poison = None
    for _ in range(3):
        ok(post(url, {"input": ["after the fault", "still fine"]}))
    assert held_ctx.engine.alive


def embed_ids(url: str, tags: list[int]) -> list[list[float]]:
    body = ok(post(url, {"input": ids_input(tags)}))
    return [d["embedding"] for d in body["data"]]


def test_a_500_names_a_generated_request_id(held: tuple[str, ControlledBackend]) -> None:
    url, wrapper = held
    wrapper.poison = POISON
    resp = post(url, {"input": ids_input([150], poison_at=0)})
    err = assert_error(resp, 500)
    rid = resp.headers["x-request-id"]
    assert len(rid) >= 16 and f"request id {rid}" in err["message"]


# -- clients that hang up ----------------------------------------------------------------


def test_hung_up_clients_cost_no_forward_work(
    held: tuple[str, ControlledBackend], held_ctx: ServingContext
) -> None:
    url, wrapper = held
    computed_before = metric(url, "poolserve_computed_sequences_total")
    dropped_before = metric(url, "poolserve_dropped_sequences_total")
    gate = hold(wrapper)
    gone_tags = list(range(160, 169))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, url, {"input": ids_input([99])})
        assert wrapper.entered.wait(10)
        # Three clients send three sequences each, then hang up before their turn.
        sockets = [
            hang_up_request(url, {"input": ids_input(gone_tags[i : i + 3])}) for i in (0, 3, 6)
        ]
        wait_until(lambda: held_ctx.engine.queued_sequences == 9, what="nine sequences queued")
        for sock in sockets:
            sock.close()
        wait_until(lambda: held_ctx.engine.queued_sequences == 0, what="the queue emptied")
        gate.set()
        ok(first.result())
    assert not {s[0] for s in wrapper.computed} & set(gone_tags)
    assert metric(url, "poolserve_dropped_sequences_total") == dropped_before + 9
    assert metric(url, "poolserve_computed_sequences_total") == computed_before + 1
    wait_until(lambda: status_count(url, "499") >= 3, what="three 499s counted")
    ok(post(url, {"input": "the server goes on"}))


def status_count(url: str, status: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("poolserve_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_hang_up_while_sending_the_body_is_harmless(held: tuple[str, ControlledBackend]) -> None:
    url, _ = held
    host, port = url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"input": "only part of'
            )
    ok(post(url, {"input": "still serving"}))


# -- timeouts ----------------------------------------------------------------------------


def test_request_timeout_is_504_and_drops_queued_work(
    held: tuple[str, ControlledBackend], held_ctx: ServingContext
) -> None:
    url, wrapper = held  # the server runs with --request-timeout 2
    dropped_before = metric(url, "poolserve_dropped_sequences_total")
    gate = hold(wrapper)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, url, {"input": ids_input([99])})
        assert wrapper.entered.wait(10)
        started = time.monotonic()
        queued = pool.submit(post, url, {"input": ids_input([170, 171, 172])})
        answers = [running.result(), queued.result()]
    elapsed = time.monotonic() - started
    for resp in answers:
        err = assert_error(resp, 504)
        assert err["type"] == "RequestTimeout" and "--request-timeout" in err["message"]
    assert 1.5 < elapsed < 10
    assert metric(url, "poolserve_dropped_sequences_total") == dropped_before + 3
    gate.set()
    ok(post(url, {"input": "after the timeout"}))
    assert not {s[0] for s in wrapper.computed} & {170, 171, 172}
    assert held_ctx.engine.queued_sequences == 0


# -- the engine itself dies --------------------------------------------------------------


def test_a_dead_engine_answers_503_never_hangs(
    tiny: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_context(tiny("st"), model_workers=1)
    wrapper = control(ctx)
    with serve_in_thread(ctx) as url:
        ok(post(url, {"input": "alive"}))
        gate = hold(wrapper)
        with ThreadPoolExecutor(4) as pool:
            running = pool.submit(post, url, {"input": ids_input([99])})
            assert wrapper.entered.wait(10)
            waiting = [pool.submit(post, url, {"input": ids_input([180 + i])}) for i in range(3)]
            wait_until(lambda: ctx.engine.queued_sequences == 3, what="three queued")

            def broken() -> None:
                raise RuntimeError("the packer exploded")

            monkeypatch.setattr(ctx.engine, "_next_batch", broken)
            gate.set()
            ok(running.result(timeout=TIMEOUT))  # its batch was already computing
            for future in waiting:
                err = assert_error(future.result(timeout=TIMEOUT), 503)
                assert "packer exploded" in err["message"]
        assert requests.get(url + "/health", timeout=5).status_code == 503
        started = time.monotonic()
        assert_error(post(url, {"input": "after death"}), 503)
        assert time.monotonic() - started < 5


# -- a real process: 500 with the id in body and log; the log keeps secrets --------------


def test_subprocess_fault_and_log_lines(tiny: Callable[..., Path], tmp_path: Path) -> None:
    key = "sk-hardening-SECRET-2f9c"
    secret_text = "zebra quokka input text never logged"
    server = ServerProcess(
        [str(tiny("st")), "--api-key", key],
        tmp_path / "faults",
        env={"POOLSERVE_TEST_POISON": str(POISON), "PYTHONPATH": str(ROOT)},
        module="tests.e2e.launch",
    ).start()
    try:
        url = server.wait_healthy()
        auth = {"Authorization": f"Bearer {key}"}
        resp = requests.post(
            url + "/v1/embeddings",
            json={"input": ids_input([120], poison_at=0)},
            headers={**auth, "X-Request-Id": "poisoned-1"},
            timeout=TIMEOUT,
        )
        err = assert_error(resp, 500)
        assert "poisoned-1" in err["message"]
        resp = requests.post(
            url + "/v1/embeddings", json={"input": secret_text}, headers=auth, timeout=TIMEOUT
        )
        ok(resp)
        rid = resp.headers["x-request-id"]
        wrong = requests.post(
            url + "/v1/embeddings",
            json={"input": "x"},
            headers={"Authorization": f"Bearer {key}-wrong"},
            timeout=TIMEOUT,
        )
        assert_error(wrong, 401)
    finally:
        assert server.terminate(timeout=30) == 0
    log = server.stderr
    assert "request poisoned-1 failed" in log
    assert "id=poisoned-1 method=POST endpoint=/v1/embeddings status=500" in log
    # One structured line per request: id, endpoint, status, inputs, tokens, timings.
    line = next(x for x in log.splitlines() if f"id={rid} " in x)
    for part in ("endpoint=/v1/embeddings", "status=200", "inputs=1", "tokens=", "queue_ms="):
        assert part in line, line
    assert "compute_ms=" in line and "total_ms=" in line
    assert secret_text not in log and "quokka" not in log
    assert key not in log
