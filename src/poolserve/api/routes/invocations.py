"""POST /invocations (SageMaker): one URL for every endpoint family."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from ...errors import InvalidRequest
from ...protocol.classify import ClassifyRequest
from ...protocol.embeddings import EmbeddingRequest, PoolingRequest
from ...protocol.score import RerankRequest, ScoreRequest
from ...serving import classify, embeddings, score
from ...serving.context import ServingContext
from ..body import read_json, validate
from ._common import ctx_of, json_bytes, request_id

router = APIRouter()

Handler = Callable[[ServingContext, Any, str], Awaitable[bytes]]

# API.md's order: embeddings, classify, score, rerank, pooling. A family is a candidate
# when the served task enables it and the body carries one of its key fields (every
# field of the embeddings request is optional, so validation alone would match anything).
_FAMILIES: tuple[tuple[str, type[BaseModel], tuple[str, ...], Handler], ...] = (
    ("Embeddings", EmbeddingRequest, ("input", "messages"), embeddings.create_embeddings),
    ("Classification", ClassifyRequest, ("input", "messages"), classify.create_classify),
    ("Score", ScoreRequest, ("text_1", "queries", "data_1"), score.create_score),
    ("Rerank", RerankRequest, ("query",), score.create_rerank),
    ("Pooling", PoolingRequest, ("input", "messages"), embeddings.create_pooling),
)


@router.post("/invocations")
async def invocations(request: Request) -> Response:
    """Dispatch to the first family the model serves whose request the body validates as
    (the model named by the body's ``model``, else the first one serving the family)."""
    data = await read_json(request)
    named = data.get("model")
    named = named if isinstance(named, str) else None  # a bad one fails validation
    first_error: InvalidRequest | None = None
    for api, model, keys, handler in _FAMILIES:
        ctx = ctx_of(request, named, api)
        if not ctx.enables(api) or not any(k in data for k in keys):
            continue
        try:
            req = validate(data, model)
        except InvalidRequest as exc:
            first_error = first_error or exc
            continue
        rid = request_id(request, getattr(req, "request_id", None))
        return json_bytes(await handler(ctx, req, rid))
    if first_error is not None:
        raise first_error
    raise InvalidRequest(
        "the body matches no request type the model serves on /invocations "
        "(send `input`, `messages`, `text_1`/`text_2` or `query`/`documents`)"
    )
