"""Hugging Face text-embeddings-inference (TEI) routes, so TEI clients work unchanged.

POST /embed, /embed_all, /embed_sparse, /predict, /similarity, /decode, GET /info, and
POST / (TEI's default route: the served model's own route; GET / is health). TEI's
/rerank and /tokenize bodies are told apart from the Jina/Cohere and vLLM ones on the
same paths (routes/score.py, routes/tokenize.py) and answered here.

Every error of these routes is TEI's ``{"error": ..., "error_type": ...}`` with TEI's
status (docs/tei.md has the mapping); the rest of the server keeps the OpenAI shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ...errors import (
    ClientClosedRequest,
    EngineUnavailable,
    Overloaded,
    PoolserveError,
    RequestTimeout,
)
from ...protocol.tei import (
    TeiDecodeRequest,
    TeiEmbedAllRequest,
    TeiEmbedRequest,
    TeiPredictRequest,
    TeiRerankRequest,
    TeiSimilarityRequest,
    TeiTokenizeRequest,
)
from ...serving import tei as serving
from ...serving import tei_tokens
from ...serving.context import model_kind
from ..body import read_json, validate
from ._common import body_doc, ctx_of
from .ops import health

log = logging.getLogger("poolserve.api")

router = APIRouter()


def tei_status(exc: PoolserveError) -> tuple[int, str]:
    """TEI's (status, error_type) for a poolserve error.

    TEI's own errors (TeiError) carry theirs; a full queue is 429 ``Overloaded``, a
    stopped engine 503 ``Unhealthy``, a timeout 504 and other server faults 424
    ``Backend`` (TEI's status for a failed inference); every request fault -- a
    bad field, an unknown prompt, too many inputs or tokens -- is 422 ``Validation``.
    """
    tei_type = getattr(exc, "tei_type", None)
    if tei_type is not None:
        return int(getattr(exc, "tei_status", 422)), str(tei_type)
    if isinstance(exc, Overloaded):
        return 429, "Overloaded"
    if isinstance(exc, EngineUnavailable):
        return 503, "Unhealthy"
    if isinstance(exc, RequestTimeout):
        return 504, "Backend"
    if exc.status >= 500:
        return 424, "Backend"
    return 422, "Validation"


def tei_error(request: Request, exc: PoolserveError) -> Response:
    """The TEI-shaped answer to ``exc``."""
    status, error_type = tei_status(exc)
    message = exc.message
    if exc.status >= 500:
        rid = str(getattr(request.state, "request_id", "") or "")
        log.error("request %s failed: %s", rid, message)
        message = f"{message} (request id {rid})" if rid else message
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
    body = orjson.dumps({"error": message, "error_type": error_type})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def answer(request: Request, work: Callable[[], Awaitable[bytes]]) -> Response:
    """Run ``work`` and send its JSON bytes; poolserve errors answer in TEI's shape."""
    try:
        return Response(await work(), media_type="application/json")
    except ClientClosedRequest:
        raise  # never answered: the app's handlers only count it
    except PoolserveError as exc:
        return tei_error(request, exc)


async def rerank_body(request: Request, data: dict[str, Any]) -> Response:
    """TEI's /rerank for an already-read body (``query`` + ``texts``)."""
    ctx = ctx_of(request, api="Rerank")
    return await answer(request, lambda: serving.rerank(ctx, validate(data, TeiRerankRequest)))


async def tokenize_body(request: Request, data: dict[str, Any]) -> Response:
    """TEI's /tokenize for an already-read body (``inputs``)."""
    ctx = ctx_of(request, api="Tokenize")
    return await answer(
        request, lambda: tei_tokens.tokenize(ctx, validate(data, TeiTokenizeRequest))
    )


@router.post("/embed", openapi_extra=body_doc(TeiEmbedRequest))
async def embed(request: Request) -> Response:
    """TEI: pooled embeddings, one list of floats per input."""
    ctx = ctx_of(request, api="Embeddings")

    async def work() -> bytes:
        return await serving.embed(ctx, validate(await read_json(request), TeiEmbedRequest))

    return await answer(request, work)


@router.post("/embed_all", openapi_extra=body_doc(TeiEmbedAllRequest))
async def embed_all(request: Request) -> Response:
    """TEI: every token's embedding, [tokens][dim] per input."""
    ctx = ctx_of(request, api="Embeddings")

    async def work() -> bytes:
        return await serving.embed_all(ctx, validate(await read_json(request), TeiEmbedAllRequest))

    return await answer(request, work)


@router.post("/predict", openapi_extra=body_doc(TeiPredictRequest))
async def predict(request: Request) -> Response:
    """TEI: label scores, best first, of one input, a text pair or a batch."""
    ctx = ctx_of(request, api="Classification")

    async def work() -> bytes:
        return await serving.predict(ctx, validate(await read_json(request), TeiPredictRequest))

    return await answer(request, work)


@router.post("/similarity", openapi_extra=body_doc(TeiSimilarityRequest))
async def similarity(request: Request) -> Response:
    """TEI: cosine similarity of a source sentence with each of the sentences."""
    ctx = ctx_of(request, api="Embeddings")

    async def work() -> bytes:
        return await serving.similarity(
            ctx, validate(await read_json(request), TeiSimilarityRequest)
        )

    return await answer(request, work)


@router.post("/decode", openapi_extra=body_doc(TeiDecodeRequest))
async def decode(request: Request) -> Response:
    """TEI: token ids back to text."""
    ctx = ctx_of(request, api="Tokenize")

    async def work() -> bytes:
        return await tei_tokens.decode(ctx, validate(await read_json(request), TeiDecodeRequest))

    return await answer(request, work)


@router.post("/embed_sparse", openapi_extra=body_doc(TeiEmbedAllRequest))
async def embed_sparse(request: Request) -> Response:
    """TEI: sparse (SPLADE) weights by vocabulary id, for a SPLADE model; TEI's 424
    for any other model."""
    ctx = ctx_of(request, api="Sparse")

    async def work() -> bytes:
        return await serving.embed_sparse(
            ctx, validate(await read_json(request), TeiEmbedAllRequest)
        )

    return await answer(request, work)


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    """TEI: the served model and the server's limits."""
    return serving.info(ctx_of(request))


@router.get("/", include_in_schema=False)
async def root_health(request: Request) -> Response:
    """TEI's GET /: the health check."""
    return await health(request)


@router.post("/", include_in_schema=False)
async def root(request: Request) -> Response:
    """TEI's default route (what huggingface_hub's InferenceClient posts to): the
    served model's route -- /embed (or /similarity for a sentence-similarity body),
    /predict for a classifier, /rerank for a cross-encoder (/predict without a
    ``query``)."""
    ctx = ctx_of(request)
    try:
        data = await read_json(request)
    except ClientClosedRequest:
        raise
    except PoolserveError as exc:
        return tei_error(request, exc)
    kind = model_kind(ctx.info)
    if kind == "cross-encoder" and "query" in data:
        return await rerank_body(request, data)
    if kind in ("classifier", "cross-encoder"):
        return await answer(
            request, lambda: serving.predict(ctx, validate(data, TeiPredictRequest))
        )
    if isinstance(data.get("inputs"), dict):
        return await answer(
            request, lambda: serving.similarity(ctx, validate(data, TeiSimilarityRequest))
        )
    return await answer(request, lambda: serving.embed(ctx, validate(data, TeiEmbedRequest)))
