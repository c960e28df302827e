"""POST /v2/embed (vLLM's Cohere embed API) and POST /v1/embed (Cohere's v1 shape)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...protocol.cohere import CohereEmbedRequest
from ...serving import cohere as serving
from ..body import parse
from ._common import body_doc, ctx_of, json_bytes, request_id

router = APIRouter()


@router.post("/v2/embed", openapi_extra=body_doc(CohereEmbedRequest))
async def embed_v2(request: Request) -> Response:
    """Cohere embed v2: `texts`, `input_type`, `embedding_types`, `truncate`, ..."""
    req = await parse(request, CohereEmbedRequest)
    return json_bytes(
        await serving.create_embed(
            ctx_of(request, req.model, "Embeddings"), req, request_id(request, req.request_id)
        )
    )


@router.post("/v1/embed", openapi_extra=body_doc(CohereEmbedRequest))
async def embed_v1(request: Request) -> Response:
    """Cohere embed v1: as v2, but float rows alone when `embedding_types` is not sent."""
    req = await parse(request, CohereEmbedRequest)
    rid = request_id(request, req.request_id)
    return json_bytes(
        await serving.create_embed(
            ctx_of(request, req.model, "Embeddings"), req, rid, api_version=1
        )
    )
