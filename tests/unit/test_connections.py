"""poolserve.api.connections: read deadlines, idle keep-alive and the connection cap.

The protocol runs under a real uvicorn on a loopback port with a small ASGI app (no
model), so every case takes about one deadline; raw sockets play the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from poolserve.api import connections as C
from poolserve.config import ServerConfig

HEAD = 0.5  # --header-timeout
BODY = 0.5  # --body-timeout
IDLE = 0.6  # --keep-alive-timeout
CAP = 8  # --max-connections
SLACK = 0.4  # a deadline's close may come this late on a busy test machine


@dataclass
class App:
    """Echoes the body; ``POST /early`` answers before reading it, ``/slow`` reads late."""

    disconnects: list[str] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/early":
            await self._answer(send, 413, b"no")
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(3 * BODY)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.append(scope["path"])
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await self._answer(send, 200, body)

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes) -> None:
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Live:
    port: int
    app: App
    policy: C.ConnectionPolicy
    server: uvicorn.Server

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    app = App()
    policy = C.ConnectionPolicy(header_timeout=HEAD, body_timeout=BODY, max_connections=CAP)
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        http=functools.partial(C.GuardedHttpToolsProtocol, policy=policy),
        timeout_keep_alive=IDLE,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield Live(port, app, policy, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(autouse=True)
def _settled(live: Live) -> Iterator[None]:
    """Each case starts and ends with no connection left open."""
    yield
    deadline = time.monotonic() + 5
    while live.open_connections() or live.policy.lingering:
        assert time.monotonic() < deadline, "connections left open"
        time.sleep(0.02)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def error_of(response: bytes, status: int) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), response
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    return dict(error)


def request(path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, v in (ln.split(b": ", 1) for ln in head.split(b"\r\n")[1:])
            if k.lower() == b"content-length"
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_silent_connection_closed_without_answer(live: Live) -> None:
    with live.connect() as sock:
        data, took = read_until_closed(sock)
    assert data == b""
    assert HEAD - 0.05 <= took <= HEAD + SLACK


def test_trickled_head_gets_408_at_the_deadline(live: Live) -> None:
    with live.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"POST /echo HTTP/1.1\r\n")
        # Progress buys no time: a byte every 0.1 s until the server gives up.
        with contextlib.suppress(OSError):
            for ch in b"Host: t\r\nX-Slow: " + b"a" * 100:
                sock.sendall(bytes([ch]))
                time.sleep(0.1)
                if time.monotonic() - started > HEAD + 0.3:
                    break
        data, _ = read_until_closed(sock)
        took = time.monotonic() - started
    error = error_of(data, 408)
    assert error["type"] == "RequestTimeout"
    assert "--header-timeout" in error["message"]
    assert took <= HEAD + SLACK + 0.2


def test_lying_content_length_gets_408_and_app_sees_disconnect(live: Live) -> None:
    before = len(live.app.disconnects)
    with live.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{}")
        data, took = read_until_closed(sock)
    error = error_of(data, 408)
    assert "--body-timeout" in error["message"]
    assert BODY - 0.05 <= took <= BODY + SLACK
    deadline = time.monotonic() + 2
    while len(live.app.disconnects) == before:
        assert time.monotonic() < deadline, "the app never saw http.disconnect"
        time.sleep(0.01)
    assert live.app.disconnects[-1] == "/echo"


def test_keep_alive_serves_then_closes_idle(live: Live) -> None:
    with live.connect() as sock:
        for i in range(3):
            if i:
                # Idle longer than the head deadline between requests: the head clock
                # starts at a request's first byte, the idle one after each answer.
                time.sleep(HEAD + 0.05)
            sock.sendall(request("/echo", b"x%d" % i))
            assert read_response(sock).endswith(b"x%d" % i)
        started = time.monotonic()
        data, _ = read_until_closed(sock)
        took = time.monotonic() - started
    assert data == b""
    assert IDLE - 0.05 <= took <= IDLE + SLACK


def test_stray_bytes_do_not_keep_an_idle_connection(live: Live) -> None:
    with live.connect() as sock:
        sock.sendall(request("/echo", b"hi"))
        read_response(sock)
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(int(3 * IDLE / 0.1)):
                sock.sendall(b"\r\n")
                time.sleep(0.1)
        data, _ = read_until_closed(sock)
        took = time.monotonic() - started
    assert b"HTTP/1.1 200" not in data
    assert took <= IDLE + SLACK + 0.2


def test_answer_before_body_then_body_then_idle(live: Live) -> None:
    # An early answer (413 before the body is read): the body still has its deadline,
    # and once it is in, the connection is kept alive, then closed when idle.
    with live.connect() as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
        assert read_response(sock).startswith(b"HTTP/1.1 413")
        sock.sendall(b"cd")
        sock.sendall(request("/echo", b"again"))
        assert read_response(sock).endswith(b"again")
        data, took = read_until_closed(sock)
    assert data == b""
    assert took <= IDLE + SLACK


def test_server_holding_up_the_body_is_not_the_clients_fault(live: Live) -> None:
    # The app reads late: uvicorn stops reading past 64 KiB, and the body deadline
    # does not run out on the client meanwhile.
    body = b"z" * (512 * 1024)
    with live.connect() as sock:
        sock.sendall(request("/slow", body, extra="Connection: close\r\n"))
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.endswith(body)


def test_cap_refuses_with_503_then_admits_again(live: Live) -> None:
    held = [live.connect() for _ in range(CAP)]
    try:
        deadline = time.monotonic() + 2
        while live.open_connections() < CAP:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(3):
            with live.connect() as sock:
                sock.sendall(request("/echo", b"x"))
                data, took = read_until_closed(sock)
            error = error_of(data, 503)
            assert error["type"] == "Overloaded"
            assert "--max-connections" in error["message"]
            assert took < 0.3
        # A refused client that never reads nor closes is let go after the linger.
        quiet = live.connect()
        time.sleep(0.1)
        assert live.policy.lingering == 1
        assert live.open_connections() == CAP
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 2
    while live.open_connections():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with live.connect() as sock:
        sock.sendall(request("/echo", b"back", extra="Connection: close\r\n"))
        data, _ = read_until_closed(sock)
    assert data.endswith(b"back")
    data, took = read_until_closed(quiet)
    quiet.close()
    assert data.startswith(b"HTTP/1.1 503")


def test_uvicorn_options_from_server_config(monkeypatch: pytest.MonkeyPatch) -> None:
    options = C.uvicorn_options(
        ServerConfig(header_timeout=3, body_timeout=0, keep_alive_timeout=7, max_connections=9)
    )
    assert options["timeout_keep_alive"] == 7
    factory = options["http"]
    assert isinstance(factory, functools.partial)
    assert factory.func is C.GuardedHttpToolsProtocol
    policy = factory.keywords["policy"]
    assert (policy.header_timeout, policy.body_timeout, policy.max_connections) == (3, None, 9)
    assert (
        C.uvicorn_options(ServerConfig(max_connections=0))["http"]
        .keywords["policy"]
        .max_connections
        is None
    )
    # The defaults: 10 s head, 60 s body, uvicorn's 5 s keep-alive, a cap from ulimit -n.
    defaults = ServerConfig()
    assert (defaults.header_timeout, defaults.body_timeout, defaults.keep_alive_timeout) == (
        10.0,
        60.0,
        5.0,
    )
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert C.uvicorn_options(defaults)["http"].keywords["policy"].max_connections == 768
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1 << 20, 1 << 20))
    assert C.default_max_connections() == C.DEFAULT_MAX_CONNECTIONS


def test_policy_pickles_for_other_processes() -> None:
    import pickle

    factory = C.uvicorn_options(ServerConfig(max_connections=5))["http"]
    copy = pickle.loads(pickle.dumps(factory))
    assert copy.keywords["policy"].max_connections == 5
