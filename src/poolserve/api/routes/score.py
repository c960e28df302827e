"""POST /score (/v1/score) and POST /rerank (/v1/rerank, /v2/rerank)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...protocol.score import RerankRequest, ScoreRequest
from ...serving import score as serving
from ..body import parse, read_json, validate
from . import tei
from ._common import body_doc, ctx_of, json_bytes, request_id

router = APIRouter()


@router.post("/score", openapi_extra=body_doc(ScoreRequest))
@router.post("/v1/score", include_in_schema=False)
async def score(request: Request) -> Response:
    """vLLM's score API: `text_1` against `text_2` (1:1, 1:N or N:N)."""
    req = await parse(request, ScoreRequest)
    return json_bytes(
        await serving.create_score(
            ctx_of(request, req.model, "Score"), req, request_id(request, req.request_id)
        )
    )


@router.post("/rerank", openapi_extra=body_doc(RerankRequest))
@router.post("/v1/rerank", include_in_schema=False)
@router.post("/v2/rerank", include_in_schema=False)
async def rerank(request: Request) -> Response:
    """Jina / Cohere rerank: `documents` ordered by relevance to `query`; a TEI body
    (`texts` and no `documents`) gets TEI's answer."""
    data = await read_json(request)
    if "texts" in data and "documents" not in data:
        return await tei.rerank_body(request, data)
    req = validate(data, RerankRequest)
    return json_bytes(
        await serving.create_rerank(
            ctx_of(request, req.model, "Rerank"), req, request_id(request, req.request_id)
        )
    )
