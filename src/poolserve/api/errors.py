"""The one place where errors become HTTP answers in the OpenAI error shape."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..errors import Overloaded, PoolserveError

log = logging.getLogger("poolserve.api")

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "BadRequestError",
    408: "RequestTimeout",
    413: "RequestTooLarge",
    429: "Overloaded",
    499: "ClientClosedRequest",
    503: "Overloaded",
    504: "RequestTimeout",
}


def error_response(
    status: int,
    message: str,
    error_type: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """``{"error": {message, type, param, code}}`` with HTTP status == code."""
    return Response(
        error_body(status, message, error_type, param),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_body(
    status: int, message: str, error_type: str | None = None, param: str | None = None
) -> bytes:
    """The JSON of an error answer (also written raw by the connection layer)."""
    body = {
        "error": {
            "message": message,
            "type": error_type or _TYPES.get(status, "InternalServerError"),
            "param": param,
            "code": status,
        }
    }
    return orjson.dumps(body)


def from_exception(exc: PoolserveError, request_id: str | None = None) -> Response:
    """The answer to ``exc``; ``request_id`` is appended to the message when given."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
    message = exc.message if request_id is None else f"{exc.message} (request id {request_id})"
    return error_response(exc.status, message, exc.error_type, exc.param, headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    return f"{field or 'body'}: {first.get('msg', 'invalid request')}", field


def _request_id(request: Request) -> str:
    """The id the gateway gave this request (the client's X-Request-Id, or a new one)."""
    return str(getattr(request.state, "request_id", "") or request.headers.get("x-request-id", ""))


def install(app: FastAPI) -> None:
    """Register the exception handlers that keep every answer in the error shape."""

    @app.exception_handler(PoolserveError)
    async def _poolserve(request: Request, exc: PoolserveError) -> Response:
        if exc.status >= 500:
            # A server-side fault: the id ties the client's answer to the log line.
            rid = _request_id(request)
            log.error("request %s failed: %s", rid, exc.message)
            return from_exception(exc, request_id=rid or None)
        return from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        message, field = _validation_message(exc)
        return error_response(400, message, param=field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        rid = _request_id(request)
        log.exception("unhandled error in request %s", rid)
        return error_response(500, f"internal error ({type(exc).__name__}); request id {rid}")
