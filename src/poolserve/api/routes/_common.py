"""Helpers shared by the routers."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response

from ...serving.context import ServingContext
from ...serving.embeddings import OctetBody
from ...serving.router import ServedModels


def models_of(request: Request) -> ServedModels:
    """The served models the app factory stored on the app."""
    models: ServedModels = request.app.state.models
    return models


def ctx_of(request: Request, model: str | None = None, api: str | None = None) -> ServingContext:
    """The context of the model answering this request: the one named ``model``, else
    the first serving ``api`` (ServedModels.pick). Recorded on the request, so the
    gateway counts the request under that model's metrics label."""
    ctx = models_of(request).pick(model, api)
    request.state.served_metrics = ctx.metrics
    return ctx


def request_id(request: Request, body_id: str | None) -> str:
    """The id naming the response: the client's X-Request-Id, else the body's
    ``request_id``, else the one the gateway generated (echoed as X-Request-Id)."""
    rid = request.headers.get("x-request-id") or body_id or request.state.request_id
    return str(rid)


def json_bytes(body: bytes) -> Response:
    """The answer for a serving function's body: JSON, or vLLM's ``bytes`` /
    ``bytes_only`` answer (an OctetBody) as application/octet-stream with its
    ``metadata`` header (none for ``bytes_only``)."""
    if isinstance(body, OctetBody):
        headers = None if body.metadata is None else {"metadata": body.metadata}
        return Response(body, media_type="application/octet-stream", headers=headers)
    return Response(body, media_type="application/json")


# Request models documented with body_doc, by name; the app adds their schemas to
# the OpenAPI components (openapi_extra itself must stay plain JSON data).
BODY_MODELS: dict[str, type[BaseModel]] = {}


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra documenting a JSON body validated by hand (see api/body.py)."""
    BODY_MODELS[model.__name__] = model
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        },
    }
