"""Operational endpoints: health, ping, version, models, metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ... import __version__
from ...metrics import exposition
from ...serving.context import ServingContext
from ._common import models_of

router = APIRouter()


def _health(request: Request) -> Response:
    alive = models_of(request).alive
    return Response(status_code=200 if alive else 503)


@router.get("/health")
async def health(request: Request) -> Response:
    """200 with an empty body while every model's engine is alive; 503 when one is not."""
    return _health(request)


@router.get("/ping")
async def ping(request: Request) -> Response:
    """SageMaker-style liveness: same as /health."""
    return _health(request)


@router.post("/ping")
async def ping_post(request: Request) -> Response:
    """SageMaker-style liveness: same as /health."""
    return _health(request)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """One model card per served name, models in the order given."""
    cards: list[dict[str, Any]] = [card for ctx in models_of(request) for card in _cards(ctx)]
    return {"object": "list", "data": cards}


def _cards(ctx: ServingContext) -> list[dict[str, Any]]:
    return [
        {
            "id": name,
            "object": "model",
            "created": ctx.created,
            "owned_by": "poolserve",
            "root": ctx.info.path,
            "parent": None,
            "max_model_len": ctx.info.max_model_len,
            "permission": [],
        }
        for name in ctx.served_names
    ]


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (every model's series, each labelled with its name)."""
    body, content_type = exposition([ctx.metrics for ctx in models_of(request)])
    return Response(body, media_type=content_type)
