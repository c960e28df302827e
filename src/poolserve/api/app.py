"""The FastAPI app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from .. import __version__
from ..config import ServerConfig
from ..serving.context import ServingContext
from ..serving.router import ServedModels
from . import errors
from .admission import Counts
from .fast import DirectRoutes, direct_routes
from .middleware import GatewayMiddleware
from .routes import classify, cohere, embeddings, invocations, ops, score, tei, tokenize
from .routes._common import BODY_MODELS


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the hand-validated request bodies' schemas."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model in BODY_MODELS.items():
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[name] = model_schema
    app.openapi_schema = schema
    return schema


def _route_paths(routes: Iterable[BaseRoute]) -> set[str]:
    """The paths of ``routes``.

    Read from the routers themselves: newer FastAPI keeps an included router as one
    opaque entry in ``app.routes``, so its paths are not listed there.
    """
    return {path for r in routes if (path := getattr(r, "path", None))}


def create_app(
    served: ServingContext | ServedModels,
    server: ServerConfig | None = None,
    counts: Counts | None = None,
) -> FastAPI:
    """Build the app serving one model's context or several models (routed by each
    request's ``model``: serving/router.py); the engines start and stop with the app's
    lifespan.

    ``counts`` are the admission counts when several front-end processes share them.
    """
    server = server or ServerConfig()
    models = served if isinstance(served, ServedModels) else ServedModels([served])
    ctx = models.first

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for each in models:
            if not each.engine.alive:
                await each.engine.start()
        try:
            yield
        finally:
            # Stopped together: each finishes its admitted work within the one grace.
            await asyncio.gather(
                *(each.engine.stop(grace=app.state.shutdown_grace) for each in models)
            )
            for each in models:
                each.tokenizer.close()

    app = FastAPI(
        title="poolserve", version=__version__, lifespan=lifespan, root_path=server.root_path
    )
    app.state.models = models
    app.state.ctx = ctx  # the first model: what one-model callers (tests) reach for
    app.state.max_request_bytes = server.max_request_bytes
    app.state.shutdown_grace = server.shutdown_grace
    errors.install(app)
    routers = [
        module.router
        for module in (embeddings, score, classify, tokenize, cohere, tei, invocations, ops)
    ]
    for router in routers:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    known = _route_paths([*app.routes, *(r for router in routers for r in router.routes)])
    # Added first, so innermost: inside the gateway (auth, limits, metrics) and CORS.
    app.add_middleware(
        DirectRoutes,
        routes=direct_routes(r for router in routers for r in router.routes),
        root_path=server.root_path,
    )
    app.add_middleware(
        GatewayMiddleware,
        api_keys=server.api_key,
        max_request_bytes=server.max_request_bytes,
        metrics=ctx.metrics,
        root_path=server.root_path,
        known_paths=known,
        # Each engine bounds its own model's queue (429 for that model alone); the
        # gateway bounds the server: the sum.
        max_inflight=sum(each.engine.max_queued_requests for each in models),
        max_inflight_bytes=server.max_inflight_bytes,
        request_timeout=server.request_timeout,
        log_bodies=server.enable_log_requests,
        counts=counts,
    )
    # Added last, so outermost: the gateway's own answers (401, 413, 429, 504) carry
    # the CORS headers too, and browsers can read them.
    if server.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(server.allowed_origins),
            allow_methods=list(server.allowed_methods),
            allow_headers=list(server.allowed_headers),
            allow_credentials=server.allow_credentials,
        )
    return app
