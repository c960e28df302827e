"""Reading request bodies: JSON only, bounded, strictly parsed, validated to 400s."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest, RequestTooLarge

log = logging.getLogger("poolserve.api")

M = TypeVar("M", bound=BaseModel)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (413) even without Content-Length."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(
                f"request body is over the limit of {limit} bytes (--max-request-bytes)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


_TYPE_TAGS = {"str", "int", "bool", "float", "list", "dict", "none", "tuple", "set"}


def _is_field_name(part: object) -> bool:
    text = str(part)
    return text.isidentifier() and text not in _TYPE_TAGS


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """A one-line message naming the first bad field, and that field's dotted path."""
    err = exc.errors()[0]
    # Union members add their type tags to the path ("str", "list[int]",
    # "function-after[...]"); keep only field names and list indexes.
    fields = [str(p) for p in err.get("loc", ()) if isinstance(p, int) or _is_field_name(p)]
    where = ".".join(fields) or "body"
    msg = err.get("msg", "invalid value")
    return f"invalid `{where}`: {msg}", (fields[0] if fields else None)


async def parse(request: Request, model: type[M]) -> M:
    """Parse and validate a JSON body into ``model``; every failure is a 400."""
    if not _is_json(request.headers.get("content-type")):
        raise InvalidRequest("the request body must be JSON (Content-Type: application/json)")
    limit = getattr(request.app.state, "max_request_bytes", 64 * 1024 * 1024)
    raw = await read_body(request, limit)
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise InvalidRequest(message, param=param) from exc
    unknown = set(data) - set(type(parsed).model_fields)
    if unknown:
        log.debug("ignoring unknown fields %s", sorted(unknown))
    return parsed
