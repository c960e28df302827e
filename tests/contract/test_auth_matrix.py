"""--api-key over every route the app has x (no key, wrong key, right key); keys never logged;
CORS flags (--allowed-origins/-methods/-headers, --allow-credentials)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from poolserve.api.app import create_app
from poolserve.api.middleware import GatewayMiddleware
from poolserve.config import ServerConfig
from poolserve.serving.context import ServingContext
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import TIMEOUT, assert_error, assert_route_error
from tests.fixtures import cluster
from tests.fixtures.hardening import route_table, valid_body
from tests.fixtures.several import one_model

KEYS = ("sk-first-9d1e7c", "sk-second-51ab0f")
WRONG = "sk-wrong-77c3aa"
OPEN = {
    "/health",
    "/ping",
    "/version",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/docs/oauth2-redirect",
    "/redoc",
}
# POST routes an embedding model answers 200 (the others: 4xx, e.g. /classify -> 400).
EMBED_OK = {
    "/v1/embeddings",
    "/embeddings",
    "/pooling",
    "/tokenize",
    "/detokenize",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/invocations",
    "/embed",
    "/embed_all",
    "/similarity",
    "/decode",
    "/",
}
ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def guarded_ctx(tiny: Callable[..., Path]) -> ServingContext:
    return make_context(tiny("st"))


@pytest.fixture(scope="module")
def routes(guarded_ctx: ServingContext) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, as it is now."""
    return route_table(create_app(guarded_ctx))


@pytest.fixture(scope="module")
def guarded_url(guarded_ctx: ServingContext) -> Iterator[str]:
    server = ServerConfig(
        api_key=KEYS,
        allowed_origins=(ORIGIN,),
        allowed_methods=("GET", "POST"),
        allowed_headers=("authorization", "content-type"),
        allow_credentials=True,
        enable_log_requests=True,
    )
    with serve_in_thread(guarded_ctx, server) as url:
        yield url


def call(url: str, method: str, path: str, auth: str | None) -> requests.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    body = valid_body(path) if method == "POST" else None
    return requests.request(method, url + path, json=body, headers=headers, timeout=TIMEOUT)


def test_the_matrix_covers_the_app(routes: list[tuple[str, str]]) -> None:
    paths = {p for _, p in routes}
    assert {"/v1/embeddings", "/pooling", "/tokenize", "/v1/models", "/health"} <= paths
    assert len(routes) >= 15


@one_model
@pytest.mark.parametrize("who", ["no key", "wrong key", "first key", "second key"])
def test_every_route_by_key(
    guarded_url: str,
    routes: list[tuple[str, str]],
    who: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = {
        "no key": None,
        "wrong key": f"Bearer {WRONG}",
        "first key": f"Bearer {KEYS[0]}",
        "second key": f"Bearer {KEYS[1]}",
    }[who]
    right = who in ("first key", "second key")
    with caplog.at_level(logging.DEBUG):
        for method, path in routes:
            resp = call(guarded_url, method, path, auth)
            where = (who, method, path, resp.status_code, resp.text[:200])
            if path in OPEN or (method, path) == ("GET", "/"):  # TEI's GET /: health
                assert resp.status_code == 200, where
            elif not right:
                assert_error(resp, 401)
            elif (method == "POST" and path in EMBED_OK) or method == "GET":
                assert resp.status_code == 200, where
            else:
                assert 400 <= resp.status_code < 500 and resp.status_code != 401, where
                assert_route_error(resp, path, resp.status_code)
    # Keys, right or wrong, never reach the log (request bodies do, with the flag on).
    cluster.in_process_only("reads the server's log in this process")
    assert caplog.text, "nothing was logged"
    if right:  # --enable-log-requests: the bodies are in the request lines
        assert "body=" in caplog.text and "hello world" in caplog.text
    for key in (*KEYS, WRONG):
        assert key not in caplog.text


@pytest.mark.parametrize(
    "auth",
    [
        f"bearer {KEYS[0]}",
        f"BEARER {KEYS[0]}",
        f"Bearer  {KEYS[0]} ",
    ],
)
def test_scheme_is_case_insensitive_and_spaces_are_trimmed(guarded_url: str, auth: str) -> None:
    assert call(guarded_url, "POST", "/v1/embeddings", auth).status_code == 200


@pytest.mark.parametrize(
    "auth",
    [
        f"Bearer {KEYS[0][:-1]}",  # a prefix of a key
        f"Bearer {KEYS[0]}0",  # a key plus more
        f"Bearer {KEYS[0]},{KEYS[1]}",
        f"Bearer {KEYS[0].upper()}",
        f"Basic {KEYS[0]}",
        KEYS[0],
        "Bearer",
        "",
    ],
)
def test_near_misses_are_401(guarded_url: str, auth: str) -> None:
    assert_error(call(guarded_url, "POST", "/v1/embeddings", auth), 401)


def test_keys_are_compared_in_constant_time() -> None:
    source = inspect.getsource(GatewayMiddleware._authorized)
    assert "compare_digest" in source and "==" not in source


# -- CORS --------------------------------------------------------------------------------


def preflight(url: str, origin: str, method: str = "POST") -> requests.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    return requests.options(url + "/v1/embeddings", headers=headers, timeout=TIMEOUT)


def test_cors_preflight_from_an_allowed_origin(guarded_url: str) -> None:
    resp = preflight(guarded_url, ORIGIN)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert resp.headers["access-control-allow-credentials"] == "true"
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "authorization" in resp.headers["access-control-allow-headers"].lower()


def test_cors_preflight_refused(guarded_url: str) -> None:
    resp = preflight(guarded_url, "http://evil.example")
    assert resp.status_code == 400
    assert "access-control-allow-origin" not in resp.headers
    resp = preflight(guarded_url, ORIGIN, method="DELETE")  # not in --allowed-methods
    assert resp.status_code == 400


def test_cors_headers_on_answers_and_on_401s(guarded_url: str) -> None:
    headers = {"Origin": ORIGIN, "Authorization": f"Bearer {KEYS[0]}"}
    resp = requests.post(
        guarded_url + "/v1/embeddings", json={"input": "hi"}, headers=headers, timeout=TIMEOUT
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    # A browser can read the 401 too (CORS wraps the gateway).
    resp = requests.post(
        guarded_url + "/v1/embeddings",
        json={"input": "hi"},
        headers={"Origin": ORIGIN},
        timeout=TIMEOUT,
    )
    assert_error(resp, 401)
    assert resp.headers["access-control-allow-origin"] == ORIGIN


def test_cors_allows_any_origin_by_default_as_vllm(auth_url: str) -> None:
    resp = preflight(auth_url, "http://anywhere.example")
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "*"
    resp = requests.get(auth_url + "/health", headers={"Origin": ORIGIN}, timeout=TIMEOUT)
    assert resp.headers["access-control-allow-origin"] == "*"


def test_no_cors_with_an_empty_origin_list(guarded_ctx: ServingContext) -> None:
    with serve_in_thread(guarded_ctx, ServerConfig(allowed_origins=())) as url:
        resp = requests.get(url + "/health", headers={"Origin": ORIGIN}, timeout=TIMEOUT)
        assert resp.status_code == 200
        assert "access-control-allow-origin" not in resp.headers
        assert preflight(url, ORIGIN).status_code == 405
