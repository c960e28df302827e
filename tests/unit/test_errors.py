"""poolserve.api.errors (exception -> HTTP answer) and poolserve.api.body.parse, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from poolserve import errors as E
from poolserve.api import errors as api_errors
from poolserve.api.body import parse
from poolserve.protocol.embeddings import EmbeddingRequest
from poolserve.serving.tei_inputs import TeiError

EXPECTED = {
    E.InvalidRequest: (400, "BadRequestError"),
    E.ModelNotFound: (404, "NotFoundError"),
    E.RouteNotFound: (404, "NotFoundError"),
    E.MethodNotAllowed: (405, "BadRequestError"),
    E.Unauthorized: (401, "AuthenticationError"),
    E.RequestTooLarge: (413, "RequestTooLarge"),
    E.Overloaded: (429, "Overloaded"),
    E.EngineUnavailable: (503, "Overloaded"),
    E.InternalError: (500, "InternalServerError"),
    E.RequestTimeout: (504, "RequestTimeout"),
    E.RequestReadTimeout: (408, "RequestTimeout"),
    E.TooManyConnections: (503, "Overloaded"),
    E.ClientClosedRequest: (499, "ClientClosedRequest"),
    # TEI's errors: a 400 in the OpenAI shape, TEI's own status on the TEI routes
    TeiError: (400, "BadRequestError"),
}


def all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *all_subclasses(sub)}
    return out


def error_body(response: httpx.Response | object) -> dict:
    raw = response.content if isinstance(response, httpx.Response) else response.body  # type: ignore[attr-defined]
    data = orjson.loads(raw)
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "param", "code"}
    return data["error"]


def test_every_error_class_is_mapped() -> None:
    assert all_subclasses(E.PoolserveError) == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_from_exception(cls: type[E.PoolserveError]) -> None:
    status, kind = EXPECTED[cls]
    exc = (
        cls("something went wrong")
        if cls is E.Overloaded
        else cls("something went wrong", param="input")
    )
    assert (exc.status, exc.error_type) == (status, kind)
    response = api_errors.from_exception(exc)
    assert response.status_code == status
    assert response.media_type == "application/json"
    body = error_body(response)
    assert body["message"] == "something went wrong"
    assert body["type"] == kind
    assert body["code"] == status
    assert body["param"] == (None if cls is E.Overloaded else "input")
    assert ("retry-after" in response.headers) == (cls is E.Overloaded)


def test_overloaded_carries_retry_after() -> None:
    response = api_errors.from_exception(E.Overloaded("busy", retry_after=7))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert api_errors.from_exception(E.Overloaded("busy")).headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "BadRequestError"), (401, "AuthenticationError"), (404, "NotFoundError"),
     (405, "BadRequestError"), (413, "RequestTooLarge"), (429, "Overloaded"),
     (503, "Overloaded"), (500, "InternalServerError"), (502, "InternalServerError")],
)  # fmt: skip
def test_error_response_default_types(status: int, kind: str) -> None:
    body = error_body(api_errors.error_response(status, "m"))
    assert (body["type"], body["code"], body["param"]) == (kind, status, None)


def test_model_load_error_is_not_a_request_error() -> None:
    assert not issubclass(E.ModelLoadError, E.PoolserveError)


# -- an app with the handlers installed ---------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    count: StrictInt = 1
    tags: list[StrictInt] | None = None


LIMIT = 200


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.max_request_bytes = LIMIT
    api_errors.install(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return (await parse(request, Body)).model_dump()

    @app.post("/embed")
    async def embed(request: Request) -> dict:
        return (await parse(request, EmbeddingRequest)).model_dump(exclude_none=True)

    @app.get("/raise/{name}")
    async def raise_(name: str) -> None:
        cls = next(c for c in EXPECTED if c.__name__ == name)
        raise cls("from the route") if cls is E.Overloaded else cls("from the route", param="p")

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    @app.get("/typed")
    async def typed(n: int) -> dict:
        return {"n": n}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def post(
    client: httpx.AsyncClient,
    path: str,
    content: bytes | str,
    ctype: str | None = "application/json",
):
    headers = {"content-type": ctype} if ctype else {}
    return client.post(path, content=content, headers=headers)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
async def test_installed_handler_maps_route_errors(client: httpx.AsyncClient, cls: type) -> None:
    status, kind = EXPECTED[cls]
    r = await client.get(f"/raise/{cls.__name__}")
    assert r.status_code == status
    body = error_body(r)
    assert (body["type"], body["code"], body["message"]) == (kind, status, "from the route")
    if cls is E.Overloaded:
        assert r.headers["retry-after"] == "1"


async def test_unknown_route_is_404_in_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404
    body = error_body(r)
    assert body["type"] == "NotFoundError" and "/nope" in body["message"]


async def test_wrong_method_is_405_in_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/echo")
    assert r.status_code == 405
    assert error_body(r)["code"] == 405


async def test_unhandled_exception_is_500_without_internals(client: httpx.AsyncClient) -> None:
    r = await client.get("/crash", headers={"x-request-id": "abc123"})
    assert r.status_code == 500
    body = error_body(r)
    assert body["type"] == "InternalServerError"
    assert "secret internals" not in body["message"]
    assert "abc123" in body["message"]


async def test_fastapi_validation_is_400_not_422(client: httpx.AsyncClient) -> None:
    r = await client.get("/typed", params={"n": "x"})
    assert r.status_code == 400
    body = error_body(r)
    assert body["type"] == "BadRequestError" and body["param"] == "query.n"
    assert body["message"].startswith("query.n: ")


# -- body.parse --------------------------------------------------------------------------


async def test_valid_body(client: httpx.AsyncClient) -> None:
    r = await post(client, "/echo", b'{"name": "x", "tags": [1, 2], "unknown": {"a": 1}}')
    assert r.status_code == 200
    assert r.json() == {"name": "x", "count": 1, "tags": [1, 2]}


@pytest.mark.parametrize(
    "ctype", ["application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"]
)
async def test_json_content_types_accepted(client: httpx.AsyncClient, ctype: str) -> None:
    r = await post(client, "/echo", b'{"name": "x"}', ctype)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_non_json_content_type(client: httpx.AsyncClient, ctype: str | None) -> None:
    r = await post(client, "/echo", b'{"name": "x"}', ctype)
    assert r.status_code == 400
    body = error_body(r)
    assert body["type"] == "BadRequestError" and "must be JSON" in body["message"]


async def test_empty_body(client: httpx.AsyncClient) -> None:
    r = await post(client, "/echo", b"")
    assert r.status_code == 400
    assert "empty" in error_body(r)["message"]


@pytest.mark.parametrize(
    "raw", [b"{", b"{'name': 'x'}", b'{"name": "x",}', b"\xff\xfe", b'{"name": "x"} trailing']
)
async def test_invalid_json(client: httpx.AsyncClient, raw: bytes) -> None:
    r = await post(client, "/echo", raw)
    assert r.status_code == 400
    assert "not valid JSON" in error_body(r)["message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_nan_literals_are_rejected(client: httpx.AsyncClient, literal: bytes) -> None:
    r = await post(client, "/echo", b'{"name": "x", "count": ' + literal + b"}")
    assert r.status_code == 400
    assert error_body(r)["type"] == "BadRequestError"


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"3", b"null", b"true"])
async def test_non_object_json(client: httpx.AsyncClient, raw: bytes) -> None:
    r = await post(client, "/echo", raw)
    assert r.status_code == 400
    assert "must be a JSON object" in error_body(r)["message"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"count": 2}', "name"),
        (b'{"name": 5}', "name"),
        (b'{"name": "x", "count": "2"}', "count"),
        (b'{"name": "x", "count": true}', "count"),
        (b'{"name": "x", "tags": [1, "a"]}', "tags"),
    ],
)
async def test_validation_error_names_the_field(
    client: httpx.AsyncClient, raw: bytes, field: str
) -> None:
    r = await post(client, "/echo", raw)
    assert r.status_code == 400
    body = error_body(r)
    assert body["param"] == field
    assert f"`{field}" in body["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"input": 5}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ({"input": "x", "dimensions": 1.5}, "dimensions"),
        ({"messages": [{"content": "hi"}]}, "messages"),
    ],
)
async def test_protocol_validation_names_the_field(
    client: httpx.AsyncClient, payload: dict, field: str
) -> None:
    r = await post(client, "/embed", orjson.dumps(payload))
    assert r.status_code == 400
    body = error_body(r)
    assert body["param"] == field
    assert f"invalid `{field}" in body["message"]
    assert "list[" not in body["message"] and ".str" not in body["message"]


async def test_body_over_limit_is_413(client: httpx.AsyncClient) -> None:
    big = orjson.dumps({"name": "x" * (LIMIT * 2)})
    r = await post(client, "/echo", big)
    assert r.status_code == 413
    body = error_body(r)
    assert body["type"] == "RequestTooLarge" and str(LIMIT) in body["message"]


async def test_chunked_body_over_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 50
        yield b'"}'

    r = await client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413


async def test_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    prefix, suffix = b'{"name": "', b'"}'
    raw = prefix + b"x" * (LIMIT - len(prefix) - len(suffix)) + suffix
    assert len(raw) == LIMIT
    r = await post(client, "/echo", raw)
    assert r.status_code == 200
