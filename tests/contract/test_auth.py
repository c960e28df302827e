"""--api-key: every POST route and GET /v1/models need `Authorization: Bearer k`."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import requests

from tests.contract.util import API_KEY, TIMEOUT, assert_error, ok
from tests.fixtures.several import one_model

GUARDED_POSTS = {
    "/v1/embeddings": {"input": "hi"},
    "/embeddings": {"input": "hi"},
    "/pooling": {"input": "hi"},
    "/tokenize": {"prompt": "hi"},
    "/detokenize": {"tokens": [5]},
}
BAD_HEADERS = [
    None,
    "Bearer wrong",
    f"Bearer {API_KEY}x",
    "Bearer",
    "Bearer ",
    API_KEY,
    f"Basic {API_KEY}",
    f"Token {API_KEY}",
]


def call(url: str, method: str, path: str, auth: str | None, body: Any = None) -> requests.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    return requests.request(method, url + path, json=body, headers=headers, timeout=TIMEOUT)


@pytest.mark.parametrize("auth", BAD_HEADERS)
@pytest.mark.parametrize("path", GUARDED_POSTS)
def test_post_routes_need_the_key(auth_url: str, path: str, auth: str | None) -> None:
    resp = call(auth_url, "POST", path, auth, GUARDED_POSTS[path])
    assert_error(resp, 401)


@pytest.mark.parametrize("path", GUARDED_POSTS)
def test_post_routes_with_the_key(auth_url: str, path: str) -> None:
    ok(call(auth_url, "POST", path, f"Bearer {API_KEY}", GUARDED_POSTS[path]))


@pytest.mark.parametrize("auth", BAD_HEADERS)
def test_models_needs_the_key(auth_url: str, auth: str | None) -> None:
    assert_error(call(auth_url, "GET", "/v1/models", auth), 401)


@one_model
def test_models_with_the_key(auth_url: str) -> None:
    body = ok(call(auth_url, "GET", "/v1/models", f"Bearer {API_KEY}"))
    assert [card["id"] for card in body["data"]] == ["guarded"]


def test_auth_comes_before_validation(auth_url: str) -> None:
    # A bad body without a key is a 401, not a 400 that would leak the API's shape.
    resp = requests.post(auth_url + "/v1/embeddings", data=b"{", timeout=TIMEOUT)
    assert_error(resp, 401)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/ping"),
        ("POST", "/ping"),
        ("GET", "/version"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ],
)
def test_open_routes(auth_url: str, method: str, path: str) -> None:
    for auth in (None, "Bearer wrong"):
        resp = call(auth_url, method, path, auth)
        assert resp.status_code == 200, (path, auth, resp.text)


@one_model
def test_openai_sdk_with_the_key(auth_url: str) -> None:
    client = openai.OpenAI(base_url=auth_url + "/v1", api_key=API_KEY, max_retries=0)
    resp = client.embeddings.create(input="hi", model="guarded")
    assert len(resp.data) == 1 and len(resp.data[0].embedding) == 32
    assert [m.id for m in client.models.list()] == ["guarded"]


def test_openai_sdk_with_a_wrong_key(auth_url: str) -> None:
    client = openai.OpenAI(base_url=auth_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.embeddings.create(input="hi", model="guarded")
    assert info.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
