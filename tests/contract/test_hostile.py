"""A battery of hostile requests against every POST route the app has at run time.

Each body is wrong for every route (wrong types, nulls, NaN/Infinity, invalid UTF-8,
10k-deep nesting, 100k-item lists, 5 MB strings, bad token ids, duplicate keys, empty
and non-JSON bodies, wrong methods); each must be answered 4xx in the error shape, and
afterwards the server must still answer a normal request exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests

from poolserve.api.app import create_app
from poolserve.serving.context import ServingContext
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import assert_error, assert_route_error, ok, post_raw, vectors
from tests.fixtures.hardening import route_table

TIMEOUT = 60
JSON = "application/json"
# Fields of every request family, so that one body can be wrong for each route.
FIELDS = ("input", "prompt", "tokens", "text_1", "text_2", "query", "documents", "messages")


def everywhere(value: Any, **extra: Any) -> bytes:
    """A JSON object with ``value`` under every request field (plus ``extra``)."""
    return orjson.dumps({**dict.fromkeys(FIELDS, value), **extra})


def deep(depth: int) -> bytes:
    return b'{"input": ' + b"[" * depth + b"]" * depth + b"}"


BIG = "word " * 1_000_000  # a 5 MB string: far over any length limit, and over 1M tokens
HUGE_LIST = ["a"] * 100_000
DEEP_UNKNOWN = b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}"
OVERFLOW_IDS = b'{"input": [18446744073709551616], "tokens": [18446744073709551616], "query": 1}'
DUPLICATES = (
    b'{"input": "hi", "input": 5, "prompt": "a", "prompt": 5, "tokens": [1], "tokens": "x", '
    b'"text_1": "a", "text_1": 5, "query": "q", "query": 5}'
)
UNKNOWN_MODEL = everywhere("hi", model="no-such-model", tokens=[5], documents=["d"])
BAD_OPTIONS = everywhere(
    5, encoding_format=7, truncate_prompt_tokens="x", dimensions="x", priority="high"
)
BAD_MESSAGES = orjson.dumps({"messages": [{"role": 5, "content": {"x": 1}}], "input": None})

# (name, method, content type, body)
HOSTILE: list[tuple[str, str, str | None, bytes]] = [
    # -- not JSON, or not a JSON object
    ("empty body", "POST", JSON, b""),
    ("whitespace body", "POST", JSON, b"   \n "),
    ("null", "POST", JSON, b"null"),
    ("array", "POST", JSON, b'[{"input": "hi"}]'),
    ("number", "POST", JSON, b"42"),
    ("string", "POST", JSON, b'"input"'),
    ("true", "POST", JSON, b"true"),
    ("open brace", "POST", JSON, b"{"),
    ("truncated", "POST", JSON, b'{"input": "hi"'),
    ("trailing comma", "POST", JSON, b'{"input": "hi",}'),
    ("single quotes", "POST", JSON, b"{'input': 'hi'}"),
    ("two documents", "POST", JSON, b'{"input": "hi"}{"input": "hi"}'),
    ("trailing garbage", "POST", JSON, b'{"input": "hi"} xyz'),
    ("NaN literal", "POST", JSON, b'{"input": NaN}'),
    ("Infinity literal", "POST", JSON, b'{"input": [1, Infinity], "tokens": [Infinity]}'),
    ("-Infinity literal", "POST", JSON, b'{"input": -Infinity}'),
    ("overflowing float", "POST", JSON, b'{"input": 1e999, "tokens": [1e999]}'),
    ("invalid UTF-8 byte", "POST", JSON, b'{"input": "caf\xc3\x28"}'),
    ("UTF-16 body", "POST", JSON, '{"input": "hi"}'.encode("utf-16")),
    ("UTF-8 BOM", "POST", JSON, b'\xef\xbb\xbf{"input": "hi"}'),
    ("lone surrogate", "POST", JSON, b'{"input": "\\ud800", "prompt": "\\udfff"}'),
    ("raw control character", "POST", JSON, b'{"input": "a\x00b"}'),
    ("10k-deep nesting", "POST", JSON, deep(10_000)),
    ("100-deep nesting in an unknown field", "POST", JSON, DEEP_UNKNOWN),
    # -- JSON objects with the wrong content
    ("empty object", "POST", JSON, b"{}"),
    ("nulls everywhere", "POST", JSON, everywhere(None)),
    ("numbers everywhere", "POST", JSON, everywhere(5)),
    ("objects everywhere", "POST", JSON, everywhere({"text": {"nested": True}})),
    ("booleans everywhere", "POST", JSON, everywhere(True)),
    ("mixed lists", "POST", JSON, everywhere([[1, 2], "a", None])),
    ("100k-item lists", "POST", JSON, everywhere(HUGE_LIST, query=HUGE_LIST, tokens=HUGE_LIST)),
    ("5 MB strings", "POST", JSON, everywhere(BIG, tokens=BIG, documents=BIG)),
    ("negative token ids", "POST", JSON, everywhere([-1, 5], query=-1)),
    ("huge token ids", "POST", JSON, everywhere([2**40, 5], query=2**40)),
    ("int64 overflow ids", "POST", JSON, OVERFLOW_IDS),
    ("float token ids", "POST", JSON, everywhere([1.5, 2.5], query=1.5)),
    ("string token ids", "POST", JSON, everywhere([["a", "b"]], tokens=["a"], query=["a"])),
    ("duplicate keys, last one bad", "POST", JSON, DUPLICATES),
    ("unknown model", "POST", JSON, UNKNOWN_MODEL),
    ("bad option types", "POST", JSON, BAD_OPTIONS),
    ("messages of the wrong shape", "POST", JSON, BAD_MESSAGES),
    # -- not JSON at all
    ("no content type", "POST", None, b'{"input": "hi"}'),
    ("text/plain", "POST", "text/plain", b'{"input": "hi"}'),
    ("form encoded", "POST", "application/x-www-form-urlencoded", b"input=hi"),
    ("multipart", "POST", "multipart/form-data; boundary=x", b"--x\r\n\r\nhi\r\n--x--"),
    ("form body labelled JSON", "POST", JSON, b"input=hi&prompt=hi"),
    # -- wrong methods
    ("GET", "GET", None, b""),
    ("PUT", "PUT", JSON, b'{"input": "hi"}'),
    ("DELETE", "DELETE", None, b""),
    ("PATCH", "PATCH", JSON, b'{"input": "hi"}'),
]  # fmt: skip

REFERENCE_INPUT = ["the quick brown fox", "hello world"]


@pytest.fixture(scope="module")
def hostile_ctx(tiny: Callable[..., Path]) -> ServingContext:
    return make_context(tiny("st"))


@pytest.fixture(scope="module")
def post_routes(hostile_ctx: ServingContext) -> list[str]:
    """Every POST route of the app (aliases included), as the app has them now."""
    routes = [path for method, path in route_table(create_app(hostile_ctx)) if method == "POST"]
    return [p for p in routes if p != "/ping"]  # liveness: open and body-less by design


@pytest.fixture(scope="module")
def hostile_server(hostile_ctx: ServingContext) -> Iterator[tuple[str, np.ndarray]]:
    """A private server and its answer to a normal request before the battery."""
    with serve_in_thread(hostile_ctx) as url:
        before = vectors(
            ok(
                requests.post(
                    url + "/v1/embeddings", json={"input": REFERENCE_INPUT}, timeout=TIMEOUT
                )
            )
        )
        yield url, before


def test_the_battery_is_big_enough(post_routes: list[str]) -> None:
    assert len(HOSTILE) >= 40
    assert {"/v1/embeddings", "/pooling", "/tokenize", "/detokenize"} <= set(post_routes)


@pytest.mark.parametrize(
    ("method", "ctype", "data"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_request_is_4xx_in_the_error_shape(
    hostile_server: tuple[str, np.ndarray],
    post_routes: list[str],
    method: str,
    ctype: str | None,
    data: bytes,
) -> None:
    url, _ = hostile_server
    headers = {"Content-Type": ctype} if ctype else {}
    with requests.Session() as session:
        for path in post_routes:
            if method == "GET" and path == "/":
                continue  # TEI's GET / is the health check (docs/tei.md)
            resp = session.request(method, url + path, data=data, headers=headers, timeout=TIMEOUT)
            assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text[:300])
            assert_route_error(resp, path, resp.status_code)


def test_after_the_battery_the_server_answers_correctly(
    hostile_server: tuple[str, np.ndarray],
) -> None:
    url, before = hostile_server
    after = vectors(
        ok(requests.post(url + "/v1/embeddings", json={"input": REFERENCE_INPUT}, timeout=TIMEOUT))
    )
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert requests.get(url + "/health", timeout=TIMEOUT).status_code == 200
    # Nothing in the battery was a server error.
    metrics = requests.get(url + "/metrics", timeout=TIMEOUT).text
    server_errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("poolserve_requests_total{")
        and 'status="5' in line
        and not line.endswith(" 0.0")
    ]
    assert not server_errors, server_errors


@pytest.mark.parametrize(
    "data",
    [
        b'{"input": 5, "input": ["the quick brown fox", "hello world"]}',
        b'{"input": ["the quick brown fox", "hello world"], "input": ["hello world"]}',
        b'{"input": "hi", "messages": [{"role": "user", "role": "system", "content": "x"}]}',
    ],
    ids=["top level, first bad", "top level, both good", "nested"],
)
def test_duplicate_keys_are_refused(hostile_server: tuple[str, np.ndarray], data: bytes) -> None:
    # Parsers disagree on which duplicate wins (RFC 8259 leaves it undefined): an
    # ambiguous body is refused, never guessed at.
    url, before = hostile_server
    assert_error(post_raw(url, "/v1/embeddings", data), 400, contains="repeats the key")
    good = requests.post(url + "/v1/embeddings", json={"input": REFERENCE_INPUT}, timeout=TIMEOUT)
    np.testing.assert_allclose(vectors(ok(good)), before, atol=1e-6)
