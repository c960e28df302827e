"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ...protocol.tokenize import DetokenizeRequest, TokenizeRequest
from ...serving import tokenize as serving
from ..body import parse
from ._common import body_doc, ctx_of

router = APIRouter()


@router.post("/tokenize", openapi_extra=body_doc(TokenizeRequest))
async def tokenize(request: Request) -> dict[str, Any]:
    """Token ids of a prompt or a chat conversation."""
    return await serving.tokenize(ctx_of(request), await parse(request, TokenizeRequest))


@router.post("/detokenize", openapi_extra=body_doc(DetokenizeRequest))
async def detokenize(request: Request) -> dict[str, Any]:
    """Text of a list of token ids."""
    return await serving.detokenize(ctx_of(request), await parse(request, DetokenizeRequest))
