"""Slow and stalled clients against a real ``poolserve serve``, played with raw sockets.

Clients trickling request heads or stalling a body behind a lying Content-Length are
cut at --header-timeout / --body-timeout (408 in the error shape), idle kept-alive
connections at --keep-alive-timeout, and past --max-connections a new connection gets
503 and is closed at once; normal requests are served meanwhile, and the server's file
descriptors come back to where they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess
from tests.fixtures.hardening import descendants, wait_until

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEP_ALIVE = 1.0
CAP = 450
TRICKLERS = 300  # the reported case: 300 trickled heads ...
LIARS = 100  # ... and 100 bodies shorter than their Content-Length
SLACK = 1.5  # a deadline's close may come this late on a busy, shared test machine
LINGER = 1.0  # poolserve.api.connections.LINGER_SECONDS


@pytest.fixture(scope="module")
def server(
    tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        [
            str(tiny("st")),
            "--header-timeout",
            str(HEADER_TIMEOUT),
            "--body-timeout",
            str(BODY_TIMEOUT),
            "--keep-alive-timeout",
            str(KEEP_ALIVE),
            "--max-connections",
            str(CAP),
        ],
        tmp_path_factory.mktemp("slow-clients"),
    ).start()
    try:
        proc.wait_healthy()
        # Warm: whatever the first request opens is in the baseline. Concurrent requests
        # reach every front-end process of a multi-process server.
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: embed(proc.url), range(32)))
        yield proc
    finally:
        proc.terminate(timeout=30)


def embed(url: str) -> None:
    resp = requests.post(f"{url}/v1/embeddings", json={"input": ["a cat", "a dog"]}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 2


def open_fds(pid: int) -> int:
    """Descriptors the server holds: its process's and (several front ends, engines)
    its children's."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def settled_fds(pid: int) -> int:
    """The server's descriptor count once it has stopped changing."""
    last, stable_since = open_fds(pid), time.monotonic()
    while time.monotonic() - stable_since < 0.5:
        time.sleep(0.05)
        now = open_fds(pid)
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def requests_with_status(url: str, status: int) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "poolserve_requests_total" and s.labels.get("status") == str(status)
    )


def connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def wait_closed(socks: list[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    """What each socket received until the server closed it; fails on any still open."""
    received = {s: b"" for s in socks}
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while sel.get_map():
            left = deadline - time.monotonic()
            assert left > 0, f"{len(sel.get_map())} connections still open"
            for key, _ in sel.select(left):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[s] += chunk
                else:
                    sel.unregister(s)
    return received


def error_of(response: bytes, status: int) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), response[:300]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    return dict(error)


def test_trickled_heads_and_lying_bodies_are_cut_while_others_are_served(
    server: ServerProcess,
) -> None:
    url, proc = server.url, server.proc
    assert proc is not None
    baseline = settled_fds(proc.pid)
    closed_499 = requests_with_status(url, 499)
    started = time.monotonic()
    tricklers = [connect(url) for _ in range(TRICKLERS)]
    for s in tricklers:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\n")
    liars = [connect(url) for _ in range(LIARS)]
    for s in liars:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000\r\n\r\n{"input": "a cat'
        )
    stop = threading.Event()

    def trickle() -> None:  # a header byte per connection every 0.2 s: progress buys no time
        while not stop.wait(0.2):
            for s in tricklers:
                with contextlib.suppress(OSError):
                    s.send(b"x")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        # The server holds them all (one descriptor each), and serves others meanwhile.
        wait_until(
            lambda: open_fds(proc.pid) >= baseline + TRICKLERS + LIARS,
            timeout=HEADER_TIMEOUT,
            what="every stalled client connected",
        )
        embed(url)
        assert time.monotonic() - started < HEADER_TIMEOUT, "too slow to test the deadline"
        # All cut at their deadline, each with a 408 in the error shape.
        got = wait_closed(tricklers + liars, timeout=max(HEADER_TIMEOUT, BODY_TIMEOUT) + SLACK)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    assert took <= max(HEADER_TIMEOUT, BODY_TIMEOUT) + SLACK
    for s in tricklers:
        assert "--header-timeout" in error_of(got[s], 408)["message"]
    for s in liars:
        assert "--body-timeout" in error_of(got[s], 408)["message"]
    # Normal requests still work, the stalled bodies count as gone clients (499), no
    # tracebacks, and every descriptor is released (the clients' sockets still open).
    embed(url)
    wait_until(lambda: requests_with_status(url, 499) - closed_499 == LIARS, what="499s recorded")
    wait_until(lambda: open_fds(proc.pid) <= baseline, timeout=LINGER + SLACK, what="fds back")
    for s in tricklers + liars:
        s.close()
    assert "Traceback" not in server.stderr


def test_silent_connection_is_closed_without_answer(server: ServerProcess) -> None:
    with connect(server.url) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        took = time.monotonic() - started
    assert HEADER_TIMEOUT - 0.1 <= took <= HEADER_TIMEOUT + SLACK


def test_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    with connect(server.url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        data = read_until_closed(sock)
        took = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in data.lower()  # kept alive, then closed when idle
    assert KEEP_ALIVE - 0.1 <= took <= KEEP_ALIVE + SLACK


def test_past_the_cap_503_and_close_then_admitted_again(server: ServerProcess) -> None:
    url, proc = server.url, server.proc
    assert proc is not None
    baseline = settled_fds(proc.pid)
    started = time.monotonic()
    held = [connect(url) for _ in range(CAP)]
    try:
        wait_until(
            lambda: open_fds(proc.pid) >= baseline + CAP,
            timeout=HEADER_TIMEOUT / 2,
            what="the server holds the cap's connections",
        )
        refused = []
        for _ in range(5):
            with connect(url) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                t0 = time.monotonic()
                refused.append(read_until_closed(sock))
                assert time.monotonic() - t0 < 0.5  # closed at once, not at a deadline
        # Only now may the held connections time out: they were held throughout.
        assert time.monotonic() - started < HEADER_TIMEOUT, "too slow to test the cap"
    finally:
        for sock in held:
            sock.close()
    for data in refused:
        error = error_of(data, 503)
        assert error["type"] == "Overloaded"
        assert "--max-connections" in error["message"]
    # Released: new connections are served again, and no descriptor is left behind.
    wait_until(lambda: open_fds(proc.pid) <= baseline, timeout=2 + SLACK, what="fds back")
    embed(url)
    resp = requests.get(f"{url}/health", timeout=10)
    assert resp.status_code == 200
