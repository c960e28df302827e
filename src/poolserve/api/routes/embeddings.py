"""POST /v1/embeddings (/embeddings) and POST /pooling."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...protocol.embeddings import EmbeddingRequest, PoolingRequest
from ...serving import embeddings as serving
from ..body import parse
from ._common import body_doc, ctx_of, json_bytes, request_id

router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=body_doc(EmbeddingRequest))
@router.post("/embeddings", include_in_schema=False)
async def embeddings(request: Request) -> Response:
    """OpenAI/vLLM embeddings: `input` (texts or token ids) or chat `messages`."""
    req = await parse(request, EmbeddingRequest)
    return json_bytes(
        await serving.create_embeddings(
            ctx_of(request, req.model, "Embeddings"), req, request_id(request, req.request_id)
        )
    )


@router.post("/pooling", openapi_extra=body_doc(PoolingRequest))
async def pooling(request: Request) -> Response:
    """vLLM's pooling API: the served task's pooled output per input."""
    req = await parse(request, PoolingRequest)
    return json_bytes(
        await serving.create_pooling(
            ctx_of(request, req.model, "Pooling"), req, request_id(request, req.request_id)
        )
    )
