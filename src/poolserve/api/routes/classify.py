"""POST /classify."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...protocol.classify import ClassifyRequest
from ...serving import classify as serving
from ..body import parse
from ._common import body_doc, ctx_of, json_bytes, request_id

router = APIRouter()


@router.post("/classify", openapi_extra=body_doc(ClassifyRequest))
async def classify(request: Request) -> Response:
    """vLLM's classification API: label probabilities per input."""
    req = await parse(request, ClassifyRequest)
    return json_bytes(
        await serving.create_classify(
            ctx_of(request, req.model, "Classification"), req, request_id(request, req.request_id)
        )
    )
