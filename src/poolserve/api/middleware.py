"""One pure-ASGI middleware: request id, API key, admission, limits, timeout, disconnects,
metrics and the access log."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..accounting import RequestStats, current_request
from ..errors import (
    EngineUnavailable,
    Overloaded,
    PoolserveError,
    RequestTimeout,
    RequestTooLarge,
    Unauthorized,
)
from .admission import BYTES, REQUESTS, Counts
from .errors import from_exception

log = logging.getLogger("poolserve.access")

# Open whatever the key: liveness, version, metrics and the docs.
_OPEN_PATHS = {
    "/health",
    "/ping",
    "/version",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/docs/oauth2-redirect",
    "/redoc",
}

# Status recorded for a request whose client went away before its answer (nginx's).
CLIENT_CLOSED = 499

# With --enable-log-requests, this much of each body goes into its log line.
LOGGED_BODY_CHARS = 2000

# Messages other than http.disconnect the watcher tolerates after the body (uvicorn
# sends none; the bound keeps a misbehaving server from spinning the watcher).
_MAX_STRAY_MESSAGES = 100


class _Exchange:
    """One request's channel: the body as the app reads it, then the client's hang-up.

    The app reads the body through :meth:`receive`. Once the body is complete the
    watcher owns the server's receive channel: the only message left is
    ``http.disconnect``, and the app (if it asks again) gets it when it comes.
    Each body chunk is first charged to ``charge`` (which raises when the server holds
    too many body bytes); ``held`` counts the bytes charged, for the caller to release.
    """

    def __init__(
        self, receive: Receive, keep_body: bool, charge: Callable[[int], None] | None = None
    ) -> None:
        self._receive = receive
        self._charge = charge
        self.held = 0
        self.body_done = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.keep_body = keep_body
        self.body = bytearray()
        self.response_started = False

    async def receive(self) -> Message:
        if self.body_done.is_set():
            await self.disconnected.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected.set()
        elif message["type"] == "http.request":
            if self._charge is not None:
                size = len(message.get("body", b""))
                self._charge(size)
                self.held += size
            if self.keep_body and len(self.body) < LOGGED_BODY_CHARS:
                self.body += message.get("body", b"")[:LOGGED_BODY_CHARS]
            if not message.get("more_body", False):
                self.body_done.set()
        return message

    async def watch(self) -> None:
        """Return when the client hangs up (watching starts once the body is read)."""
        await self.body_done.wait()
        for _ in range(_MAX_STRAY_MESSAGES):
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return
        await asyncio.Event().wait()  # a server that never says: just never fire


class GatewayMiddleware:
    """Runs before routing for every HTTP request.

    - assigns ``X-Request-Id`` (the client's, or a new one) and echoes it back;
    - with API keys set, answers 401 to any POST and to GET /v1/models and /info without a
      matching ``Authorization: Bearer <key>`` (compared in constant time);
    - answers 413 early when Content-Length is over the body limit;
    - admits at most ``max_inflight`` POST requests at once, holding at most
      ``max_inflight_bytes`` of request bodies between them (429 with Retry-After past
      either, before the body is read when Content-Length tells), so memory stays
      bounded;
    - runs each POST so that a client hanging up, or ``request_timeout`` passing,
      cancels the handler: the engine then drops the request's queued sequences
      (a timeout answers 504; a gone client gets nothing and is counted as 499);
    - records per-endpoint status and duration, and one access-log line per POST
      (and GET /v1/models) with what the engine did for it; never the API key,
      and the body only with ``log_bodies``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Sequence[str],
        max_request_bytes: int,
        metrics: Any,
        root_path: str = "",
        known_paths: set[str] | None = None,
        max_inflight: int | None = None,
        max_inflight_bytes: int | None = None,
        request_timeout: float | None = None,
        log_bodies: bool = False,
        counts: Counts | None = None,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys if k]
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics
        self.root_path = root_path.rstrip("/")
        # Metrics label only known routes, so random paths cannot grow the label set.
        self.known_paths = known_paths or set()
        self.max_inflight = max_inflight
        self.request_timeout = request_timeout
        self.log_bodies = log_bodies
        self.max_inflight_bytes = max_inflight_bytes
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()
        # Requests admitted, and the body bytes they hold (shared by front-end processes).
        self.counts = counts if counts is not None else Counts()
        # This process's share of them: the gauge (summed over front-end processes).
        self.local_inflight = 0

    def _new_id(self) -> str:
        """A unique request id: a random per-process prefix and a counter (a random id
        per request cost a system call each)."""
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    def _bytes_refusal(self, more: int) -> Overloaded | None:
        limit = self.max_inflight_bytes
        if limit is None or self.counts.get(BYTES) + more <= limit:
            return None
        return Overloaded(
            f"the server holds {limit} bytes of request bodies, its limit "
            "(--max-inflight-bytes); retry later"
        )

    def _charge_bytes(self, size: int) -> None:
        # A chunked body, or one longer than its Content-Length said, is checked as it
        # arrives: the app's read fails with the 429.
        if not self.counts.try_add(BYTES, size, self.max_inflight_bytes):
            refusal = self._bytes_refusal(size)
            raise refusal or Overloaded("the server holds too many request body bytes")

    def _needs_key(self, method: str, path: str) -> bool:
        if not self.keys or path in _OPEN_PATHS or method == "OPTIONS":
            return False
        # GET /info names the model and the limits, as /v1/models does (TEI guards it too).
        return method != "GET" or path.startswith("/v1/models") or path == "/info"

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        token = token.strip()
        # Check every key (no early exit) so timing says nothing about which matched.
        return any([hmac.compare_digest(token, key) for key in self.keys])

    def _refusal(
        self, method: str, path: str, headers: dict[bytes, bytes]
    ) -> PoolserveError | None:
        """The error that answers this request before it runs, or None."""
        if self._needs_key(method, path) and not self._authorized(headers):
            return Unauthorized("invalid or missing API key; send `Authorization: Bearer <key>`")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            return RequestTooLarge(
                f"request body is over the limit of {self.max_request_bytes} bytes "
                "(--max-request-bytes)"
            )
        if not self._admits(method, path):
            return None
        limit = self.max_inflight
        # Counted here, atomically (several processes may share the count); the caller
        # gives the slot back when it answers.
        if not self.counts.try_add(REQUESTS, 1, limit):
            return Overloaded(
                f"the server is at its limit of {limit} concurrent requests "
                "(--max-queued-requests); retry later"
            )
        if length is not None and length.isdigit():
            refusal = self._bytes_refusal(int(length))
            if refusal is not None:
                self.counts.add(REQUESTS, -1)
                return refusal
        return None

    @staticmethod
    def _admits(method: str, path: str) -> bool:
        """Requests that do work, so count against the admission limit."""
        return method == "POST" and path not in _OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1") or self._new_id()
        # Handlers read it from request.state; the client's header stays as sent so a
        # body `request_id` can still name the response.
        scope.setdefault("state", {})["request_id"] = rid
        path = scope["path"]
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        method = scope["method"]
        status_box = [500]
        exchange = _Exchange(receive, keep_body=self.log_bodies, charge=self._charge_bytes)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.response_started = True
                status_box[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        stats = RequestStats()
        token = current_request.set(stats)
        admitted = False
        try:
            refusal = self._refusal(method, path, headers)
            if refusal is not None:
                await from_exception(refusal)(scope, receive, send_wrapper)
                return
            if not self._admits(method, path):
                await self.app(scope, receive, send_wrapper)
                return
            admitted = True  # _refusal counted it
            self.local_inflight += 1
            self.metrics.on_inflight(self.local_inflight)
            gone = await self._run_guarded(scope, exchange, send_wrapper)
            if gone:
                status_box[0] = CLIENT_CLOSED
        finally:
            self.counts.add(BYTES, -exchange.held)
            if admitted:
                self.counts.add(REQUESTS, -1)
                self.local_inflight -= 1
                self.metrics.on_inflight(self.local_inflight)
            current_request.reset(token)
            seconds = time.perf_counter() - started
            if method == "POST" or path == "/v1/models":
                endpoint = path if path in self.known_paths else "other"
                # Under the label of the model the router chose (api/routes/_common.py).
                metrics = scope["state"].get("served_metrics", self.metrics)
                metrics.on_request(endpoint, status_box[0], seconds)
                self._log(rid, method, path, status_box[0], seconds, stats, exchange)

    async def _run_guarded(self, scope: Scope, exchange: _Exchange, send: Send) -> bool:
        """Run the app for one POST; True when the client hung up before its answer.

        A hang-up or the timeout before the response starts cancels the app (the
        engine drops the request's queued work); a timeout then answers 504. When the
        server cancels the request (its shutdown grace period is over), it gets 503.
        """
        app_task = asyncio.ensure_future(self.app(scope, exchange.receive, send))
        watch_task = asyncio.ensure_future(exchange.watch())
        error: PoolserveError | None = None
        try:
            done, _ = await asyncio.wait(
                {app_task, watch_task},
                timeout=self.request_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if app_task in done:
                app_task.result()  # re-raise what the app raised
                return False
            if exchange.response_started:  # answering already: let it finish
                await app_task
                return False
            if watch_task in done:
                return True
            error = RequestTimeout(
                f"the request took longer than {self.request_timeout:g} s "
                "(--request-timeout); its queued work was dropped"
            )
        except asyncio.CancelledError:
            if exchange.response_started:
                raise
            # Not uvicorn's bare 500 with a traceback: an answer in the error shape.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            error = EngineUnavailable("the server is shutting down")
        finally:
            for task in (watch_task, app_task):  # the app's cancellation drops its work
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        await from_exception(error)(scope, exchange.receive, send)
        return False

    def _log(
        self,
        rid: str,
        method: str,
        path: str,
        status: int,
        seconds: float,
        stats: RequestStats,
        exchange: _Exchange,
    ) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        line = (
            f"request id={rid} method={method} endpoint={path} status={status} "
            f"inputs={stats.sequences} tokens={stats.tokens} "
            f"queue_ms={stats.queue_seconds * 1000:.1f} "
            f"compute_ms={stats.compute_seconds * 1000:.1f} total_ms={seconds * 1000:.1f}"
        )
        if self.log_bodies and exchange.body:
            text = bytes(exchange.body[:LOGGED_BODY_CHARS]).decode("utf-8", "replace")
            line += f" body={text!r}"
        log.info("%s", line)
