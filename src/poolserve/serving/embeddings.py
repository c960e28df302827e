"""POST /v1/embeddings, and POST /pooling (classifiers: see :mod:`.classify`)."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ..models.base import CLASSIFIER, TOKENS
from ..models.post import finish_embeddings
from ..protocol.embeddings import EmbeddingRequest, PoolingRequest
from .classify import pooled_classifier_output
from .context import ServingContext, check_priority, dump_json, resolve_switch, usage
from .prompts import sequences_for
from .tokens import PER_TOKEN_TASKS, check_pooling_task, per_token_output, pooled_token_output


def _normalize_flag(ctx: ServingContext, req: EmbeddingRequest) -> bool:
    """Resolve the activation switches that apply to embeddings; 400 on the others."""
    return resolve_switch(
        req,
        ("normalize", "use_activation"),
        ctx.info.normalize,
        rejected=("activation", "softmax"),
        where="embedding models",
    )


def _dimensions(ctx: ServingContext, req: EmbeddingRequest, model: str) -> int | None:
    d = req.dimensions
    if d is None:
        return None
    info = ctx.info
    if not info.matryoshka:
        raise InvalidRequest(
            f'Model "{model}" does not support matryoshka representation, changing output '
            "dimensions will lead to poor results.",
            param="dimensions",
        )
    if d < 1:
        raise InvalidRequest(f"dimensions must be at least 1, got {d}", param="dimensions")
    if info.matryoshka_dimensions and d not in info.matryoshka_dimensions:
        raise InvalidRequest(
            f'Model "{model}" only supports {list(info.matryoshka_dimensions)} for matryoshka '
            f"representation, got {d}",
            param="dimensions",
        )
    if d > info.dimension:
        raise InvalidRequest(
            f"dimensions ({d}) is larger than the model's embedding size ({info.dimension})",
            param="dimensions",
        )
    return d


async def embed(
    ctx: ServingContext, req: EmbeddingRequest, model: str, purpose: str = "embedding generation"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed a request's inputs: [n, dim] float32 vectors (in input order) and usage.

    The one embedding path: the HTTP handlers and the offline API both call it.
    """
    dimensions = _dimensions(ctx, req, model)
    normalize = _normalize_flag(ctx, req)
    check_priority(req)
    seqs = await sequences_for(ctx, req, purpose)
    outputs = await ctx.engine.submit(seqs)
    vectors = finish_embeddings(np.stack(outputs), dimensions=dimensions, normalize=normalize)
    return vectors, usage(seqs)


def _encode(vectors: np.ndarray, encoding_format: str) -> list[Any]:
    if encoding_format == "base64":
        # Little-endian float32 bytes, as the openai SDK decodes them.
        raw = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
    return list(vectors)


async def create_embeddings(ctx: ServingContext, req: EmbeddingRequest, request_id: str) -> bytes:
    """Answer POST /v1/embeddings with the response JSON bytes."""
    ctx.require("Embeddings")
    model = ctx.model_name(req.model)
    vectors, used = await embed(ctx, req, model)
    data = [
        {"index": i, "object": "embedding", "embedding": v}
        for i, v in enumerate(_encode(vectors, req.encoding_format))
    ]
    body = {
        "id": f"embd-{request_id}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": used,
    }
    return await dump_json(body, floats=vectors.size)


async def create_pooling(ctx: ServingContext, req: PoolingRequest, request_id: str) -> bytes:
    """Answer POST /pooling: the served task's pooled output per input."""
    ctx.require("Pooling")
    model = ctx.model_name(req.model)
    if req.dimensions is not None:
        raise InvalidRequest("dimensions is currently not supported", param="dimensions")
    vectors: Any
    if ctx.info.head == TOKENS:
        vectors, used = await pooled_token_output(ctx, req)
    elif req.task in PER_TOKEN_TASKS:
        vectors, used = await per_token_output(ctx, req)
    elif ctx.info.head == CLASSIFIER:
        vectors, used = await pooled_classifier_output(ctx, req)
    else:
        check_pooling_task(ctx, req.task, "embed")
        vectors, used = await embed(ctx, req, model)
    data = [
        {"index": i, "object": "pooling", "data": v}
        for i, v in enumerate(_encode(vectors, req.encoding_format))
    ]
    body = {
        "id": f"pool-{request_id}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": used,
    }
    return await dump_json(body, floats=sum(int(np.size(v)) for v in vectors))
