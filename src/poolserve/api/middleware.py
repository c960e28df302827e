"""One pure-ASGI middleware: request id, API-key check, body-size precheck, metrics."""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

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


class GatewayMiddleware:
    """Runs before routing for every HTTP request.

    - assigns ``X-Request-Id`` (the client's, or a new one) and echoes it back;
    - with API keys set, answers 401 to any POST and to GET /v1/models without a
      matching ``Authorization: Bearer <key>`` (compared in constant time);
    - answers 413 early when Content-Length is over the body limit;
    - records per-endpoint status and duration, and one access-log line.
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
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys if k]
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics
        self.root_path = root_path.rstrip("/")
        # Metrics label only known routes, so random paths cannot grow the label set.
        self.known_paths = known_paths or set()

    def _needs_key(self, method: str, path: str) -> bool:
        if not self.keys or path in _OPEN_PATHS or method == "OPTIONS":
            return False
        return method != "GET" or path.startswith("/v1/models")

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        token = token.strip()
        # Check every key (no early exit) so timing says nothing about which matched.
        return any([hmac.compare_digest(token, key) for key in self.keys])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1") or secrets.token_hex(16)
        # Handlers read it from request.state; the client's header stays as sent so a
        # body `request_id` can still name the response.
        scope.setdefault("state", {})["request_id"] = rid
        path = scope["path"]
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        method = scope["method"]
        status_box = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            if self._needs_key(method, path) and not self._authorized(headers):
                response = error_response(
                    401, "invalid or missing API key; send `Authorization: Bearer <key>`"
                )
                await response(scope, receive, send_wrapper)
                return
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
                response = error_response(
                    413,
                    f"request body is over the limit of {self.max_request_bytes} bytes "
                    "(--max-request-bytes)",
                )
                await response(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            if method == "POST" or path == "/v1/models":
                endpoint = path if path in self.known_paths else "other"
                self.metrics.on_request(endpoint, status_box[0], seconds)
                log.info(
                    "request id=%s %s %s status=%d time=%.1fms",
                    rid,
                    method,
                    path,
                    status_box[0],
                    seconds * 1000,
                )
