"""Common rules of every POST endpoint: JSON only, 400 (never 422), the error shape."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.contract.util import TIMEOUT, assert_error, ok, post

POST_ROUTES = {
    "/v1/embeddings": {"input": "hi"},
    "/embeddings": {"input": "hi"},
    "/pooling": {"input": "hi"},
    "/tokenize": {"prompt": "hi"},
    "/detokenize": {"tokens": [5, 6]},
}


def raw_post(url: str, path: str, data: bytes, content_type: str | None) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return requests.post(url + path, data=data, headers=headers, timeout=TIMEOUT)


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_non_json_content_type_is_400(tiny_url: str, path: str, content_type: str | None) -> None:
    data = requests.models.complexjson.dumps(POST_ROUTES[path]).encode()
    assert_error(raw_post(tiny_url, path, data, content_type), 400, contains="JSON")


@pytest.mark.parametrize("path", POST_ROUTES)
def test_json_content_type_with_charset_is_accepted(tiny_url: str, path: str) -> None:
    data = requests.models.complexjson.dumps(POST_ROUTES[path]).encode()
    ok(raw_post(tiny_url, path, data, "application/json; charset=utf-8"))


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize(
    "data", [b"{bad json", b'{"input": "hi",}', b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"null"]
)
def test_invalid_json_is_400(tiny_url: str, path: str, data: bytes) -> None:
    assert_error(raw_post(tiny_url, path, data, "application/json"), 400)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/embeddings", {"input": 5}, "input"),
        ("/v1/embeddings", {"input": ["a", 5]}, "input"),
        ("/v1/embeddings", {"input": [[1, 2], "a"]}, "input"),
        ("/v1/embeddings", {"input": {"text": "a"}}, "input"),
        ("/v1/embeddings", {"input": [True]}, "input"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/embeddings", {"input": "a", "normalize": "yes"}, "normalize"),
        ("/v1/embeddings", {"input": "a", "use_activation": 1}, "use_activation"),
        ("/v1/embeddings", {"input": "a", "add_special_tokens": "no"}, "add_special_tokens"),
        ("/v1/embeddings", {"input": "a", "priority": "high"}, "priority"),
        ("/v1/embeddings", {"input": "a", "model": 5}, "model"),
        ("/v1/embeddings", {"input": "a", "user": ["u"]}, "user"),
        ("/v1/embeddings", {"input": "a", "truncate_prompt_tokens": -5}, "truncate_prompt_tokens"),
        ("/v1/embeddings", {"messages": {"role": "user"}}, "messages"),
        ("/v1/embeddings", {"messages": [{"role": "user"}], "chat_template": 1}, "chat_template"),
        ("/pooling", {"input": "a", "task": 3}, "task"),
        ("/pooling", {"input": "a", "encoding_format": "binary"}, "encoding_format"),
        ("/tokenize", {"prompt": 1}, "prompt"),
        ("/tokenize", {"prompt": "a", "add_special_tokens": []}, "add_special_tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens"),
        ("/detokenize", {}, "tokens"),
    ],
)  # fmt: skip
def test_validation_error_is_400_naming_the_field(
    tiny_url: str, path: str, body: dict[str, Any], field: str
) -> None:
    resp = post(tiny_url, path, body)
    assert resp.status_code != 422
    assert_error(resp, 400, contains=field)


@pytest.mark.parametrize("path", POST_ROUTES)
def test_unknown_fields_are_ignored(tiny_url: str, path: str) -> None:
    extra = {"not_a_field": 1, "stream": True, "nested": {"x": [1, 2]}, "logprobs": None}
    plain = ok(post(tiny_url, path, POST_ROUTES[path]))
    with_extra = ok(post(tiny_url, path, {**POST_ROUTES[path], **extra}))
    for body in (plain, with_extra):
        body.pop("id", None)
        body.pop("created", None)
    assert plain == with_extra


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("POST", "/v1/nope"),
        ("GET", "/v1/models/extra/part"),
        ("POST", "/v2/embeddings"),
        ("DELETE", "/v1/nothing"),
    ],
)
def test_unknown_routes_are_404_in_the_error_shape(tiny_url: str, method: str, path: str) -> None:
    resp = requests.request(method, tiny_url + path, json={"input": "hi"}, timeout=TIMEOUT)
    assert_error(resp, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/embeddings"), ("GET", "/tokenize"), ("PUT", "/pooling"), ("DELETE", "/health")],
)
def test_wrong_method_is_in_the_error_shape(tiny_url: str, method: str, path: str) -> None:
    resp = requests.request(method, tiny_url + path, timeout=TIMEOUT)
    assert 400 <= resp.status_code < 500
    assert_error(resp, resp.status_code)


def test_server_keeps_serving_after_errors(tiny_url: str) -> None:
    for data in (b"{", b"[]", b'{"input": []}'):
        raw_post(tiny_url, "/v1/embeddings", data, "application/json")
    ok(post(tiny_url, "/v1/embeddings", {"input": "still alive"}))


def test_a_32_mib_body_is_accepted(tiny_url: str) -> None:
    body = {"input": "hi", "filler": "x" * (32 * 2**20)}
    ok(post(tiny_url, "/v1/embeddings", body))


def test_an_oversized_body_is_413_in_the_error_shape(tiny_url: str) -> None:
    # Announce 1 GiB and send nothing: the server answers from Content-Length alone.
    parts = urlsplit(tiny_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)
    try:
        conn.putrequest("POST", "/v1/embeddings")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2**30))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        err = json.loads(resp.read())["error"]
    finally:
        conn.close()
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == 413 and err["type"] == "RequestTooLarge"
