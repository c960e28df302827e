"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ...protocol.tokenize import DetokenizeRequest, TokenizeRequest
from ...serving import tokenize as serving
from ..body import parse, read_json, validate
from . import tei
from ._common import body_doc, ctx_of

router = APIRouter()


@router.post("/tokenize", openapi_extra=body_doc(TokenizeRequest))
async def tokenize(request: Request) -> Response:
    """Token ids of a prompt or a chat conversation; a TEI body (`inputs`, and neither
    `prompt` nor `messages`) gets TEI's token objects."""
    data = await read_json(request)
    if "inputs" in data and "prompt" not in data and "messages" not in data:
        return await tei.tokenize_body(request, data)
    req = validate(data, TokenizeRequest)
    body = await serving.tokenize(ctx_of(request, req.model, "Tokenize"), req)
    return Response(orjson.dumps(body), media_type="application/json")


@router.post("/detokenize", openapi_extra=body_doc(DetokenizeRequest))
async def detokenize(request: Request) -> dict[str, Any]:
    """Text of a list of token ids."""
    req = await parse(request, DetokenizeRequest)
    return await serving.detokenize(ctx_of(request, req.model, "Tokenize"), req)
