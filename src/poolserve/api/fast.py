"""The model routes, answered without FastAPI's router.

Every POST route that does model work is an ``async def f(request) -> Response`` that
reads and validates its own body (api/body.py), so FastAPI's per-request machinery
(route matching over every route, dependency solving, its exception-middleware
layers) buys nothing there; skipping it was measured at ~10% more 1-text requests a
second with an almost free model. The routes stay declared on the routers, so
/docs, /openapi.json, 404s and 405s are FastAPI's as before; the same exception
handlers (``errors.install``) answer what the endpoint raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


def direct_routes(routes: Iterable[Any]) -> dict[str, Endpoint]:
    """POST path -> endpoint, for the routes whose endpoint takes the request alone and
    returns a Response (the others keep FastAPI's handling)."""
    table: dict[str, Endpoint] = {}
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None or getattr(route, "methods", None) != {"POST"}:
            continue
        sig = inspect.signature(endpoint)
        if list(sig.parameters) == ["request"] and sig.return_annotation in ("Response", Response):
            table[route.path] = endpoint
    return table


class DirectRoutes:
    """ASGI middleware (innermost): POSTs to ``routes`` go straight to their endpoint."""

    def __init__(self, app: ASGIApp, *, routes: dict[str, Endpoint], root_path: str = "") -> None:
        self.app = app
        self.routes = routes
        self.root_path = root_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path) :] or "/"
        endpoint = self.routes.get(path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await self._handled(request, exc)
        await response(scope, receive, send)

    @staticmethod
    async def _handled(request: Request, exc: Exception) -> Response:
        """The app's registered handler for ``exc`` (its class or nearest base)."""
        handlers = request.app.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None:
                result = handler(request, exc)
                response: Response = await result if inspect.isawaitable(result) else result
                return response
        raise exc
