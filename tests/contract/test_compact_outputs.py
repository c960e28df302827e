"""vLLM's compact outputs over HTTP: encoding_format base64 / bytes / bytes_only with
embed_dtype and endianness, on /v1/embeddings and /pooling (docs/compact-outputs.md).

Every answer is decoded by the independent struct decoder of the unit tests and checked
against the float answer within the dtype's rounding, and bit for bit against torch's
conversion of the float answer (what vLLM's tensor2binary sends).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import TINY_NAMES, assert_error, ok, post
from tests.unit.test_compact_outputs import (
    EMBED_DTYPES,
    ENDIANNESS,
    ITEMSIZE,
    TOLERANCE,
    decode,
    torch_bytes,
)

TEXTS = ["A woman is playing the violin.", "Dogs and cats are popular pets.", "hi"]
ROUTES = {"/v1/embeddings": "embedding", "/pooling": "data"}
ITEM_KEYS = ["index", "embed_dtype", "endianness", "start", "end", "shape"]


def floats(url: str, path: str, body: dict[str, Any]) -> list[np.ndarray]:
    """The float answer's items, as float32 arrays in index order."""
    got = ok(post(url, path, {**body, "encoding_format": "float"}))
    key = "embedding" if path.endswith("embeddings") else "data"
    return [np.asarray(d[key], dtype=np.float32) for d in got["data"]]


def metadata(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream"
    raw = resp.headers["metadata"]
    meta: dict[str, Any] = json.loads(raw)
    assert raw == json.dumps(meta)  # Python's json.dumps layout, as vLLM sends it
    assert list(meta) == ["id", "created", "model", "data", "usage"]
    return meta


def check_items(
    items: list[bytes], expected: list[np.ndarray], embed_dtype: str, endianness: str
) -> None:
    """Each item decodes to the float answer within rounding, and is torch's bytes."""
    assert len(items) == len(expected)
    rtol, atol = TOLERANCE[embed_dtype]
    for raw, want in zip(items, expected, strict=True):
        assert raw == torch_bytes(want, embed_dtype, endianness)
        got = np.asarray(decode(raw, embed_dtype, endianness), dtype=np.float64)
        flat = want.ravel().astype(np.float64)
        assert got.shape == flat.shape
        assert np.all(np.abs(got - flat) <= rtol * np.abs(flat) + atol)


def three_ways(
    url: str, path: str, body: dict[str, Any], embed_dtype: str, endianness: str
) -> tuple[list[bytes], dict[str, Any]]:
    """base64, bytes and bytes_only for the same request: the same bytes per item.

    Returns the items and the bytes answer's metadata."""
    fields = {**body, "embed_dtype": embed_dtype, "endianness": endianness}
    b64 = ok(post(url, path, {**fields, "encoding_format": "base64"}))
    assert [d["index"] for d in b64["data"]] == list(range(len(b64["data"])))
    key = ROUTES.get(path, "embedding")
    items = [base64.b64decode(d[key]) for d in b64["data"]]

    resp = post(url, path, {**fields, "encoding_format": "bytes"})
    meta = metadata(resp)
    assert meta["id"][:5] == b64["id"][:5] and meta["model"] == b64["model"]
    assert meta["usage"] == {k: b64["usage"][k] for k in ("prompt_tokens", "total_tokens")}
    start = 0
    for i, item in enumerate(meta["data"]):
        assert list(item) == ITEM_KEYS
        assert item["index"] == i and item["start"] == start
        assert item["embed_dtype"] == embed_dtype and item["endianness"] == endianness
        size = int(np.prod(item["shape"])) * ITEMSIZE[embed_dtype]
        assert item["end"] == start + size
        assert resp.content[item["start"] : item["end"]] == items[i]
        start = item["end"]
    assert len(resp.content) == start

    only = post(url, path, {**fields, "encoding_format": "bytes_only"})
    assert only.status_code == 200, only.text
    assert only.headers["content-type"] == "application/octet-stream"
    assert "metadata" not in only.headers
    assert only.content == resp.content
    return items, meta


@pytest.mark.parametrize("endianness", ENDIANNESS)
@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
@pytest.mark.parametrize("path", list(ROUTES))
def test_every_dtype_and_byte_order(
    tiny_url: str, path: str, embed_dtype: str, endianness: str
) -> None:
    body = {"input": TEXTS}
    expected = floats(tiny_url, path, body)
    items, meta = three_ways(tiny_url, path, body, embed_dtype, endianness)
    check_items(items, expected, embed_dtype, endianness)
    assert [d["shape"] for d in meta["data"]] == [[32]] * len(TEXTS)


def test_default_base64_unchanged(tiny_url: str) -> None:
    """No embed_dtype / endianness: little-endian float32 per item (the openai SDK's)."""
    expected = floats(tiny_url, "/v1/embeddings", {"input": TEXTS})
    b64 = ok(post(tiny_url, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"}))
    got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64["data"]]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_bytes_metadata_names_the_request(tiny_url: str, tiny_tok: Any) -> None:
    resp = post(
        tiny_url,
        "/v1/embeddings",
        {"input": TEXTS, "encoding_format": "bytes", "model": TINY_NAMES[1]},
        headers={"X-Request-Id": "compact-1"},
    )
    meta = metadata(resp)
    assert meta["id"] == "embd-compact-1" and meta["model"] == TINY_NAMES[1]
    assert isinstance(meta["created"], int)
    n = sum(len(tiny_tok(t)["input_ids"]) for t in TEXTS)
    assert meta["usage"] == {"prompt_tokens": n, "total_tokens": n}
    assert meta["data"][0] == {
        "index": 0,
        "embed_dtype": "float32",
        "endianness": "native",
        "start": 0,
        "end": 128,
        "shape": [32],
    }
    pool = post(tiny_url, "/pooling", {"input": "hi", "encoding_format": "bytes"})
    assert metadata(pool)["id"].startswith("pool-")
    alias = post(tiny_url, "/embeddings", {"input": TEXTS, "encoding_format": "bytes"})
    assert alias.content == resp.content
    # SageMaker's /invocations answers the same bytes, the same way.
    sage = post(tiny_url, "/invocations", {"input": TEXTS, "encoding_format": "bytes"})
    assert metadata(sage)["data"] == meta["data"] and sage.content == resp.content
    only = post(tiny_url, "/invocations", {"input": TEXTS, "encoding_format": "bytes_only"})
    assert only.headers["content-type"] == "application/octet-stream"
    assert "metadata" not in only.headers and only.content == resp.content


@pytest.mark.parametrize("path", list(ROUTES))
def test_float_ignores_dtype_and_byte_order(tiny_url: str, path: str) -> None:
    plain = ok(post(tiny_url, path, {"input": TEXTS}))
    asked = ok(
        post(tiny_url, path, {"input": TEXTS, "embed_dtype": "fp8_e5m2", "endianness": "big"})
    )
    assert asked["data"] == plain["data"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("encoding_format", "hex"),
        ("encoding_format", "BYTES"),
        ("encoding_format", "binary"),
        ("embed_dtype", "float64"),
        ("embed_dtype", "int8"),
        ("embed_dtype", "fp8"),
        ("embed_dtype", 16),
        ("endianness", "middle"),
        ("endianness", "NATIVE"),
        ("endianness", None),
    ],
)
@pytest.mark.parametrize("path", list(ROUTES))
def test_invalid_values_are_400(tiny_url: str, path: str, field: str, value: Any) -> None:
    body = {"input": "hi", "encoding_format": "bytes", field: value}
    assert_error(post(tiny_url, path, body), 400, contains=field, param=field)


@pytest.mark.parametrize("fmt", ["bytes", "bytes_only"])
def test_errors_stay_json(tiny_url: str, fmt: str) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": [], "encoding_format": fmt})
    assert_error(resp, 400)
    resp = post(tiny_url, "/pooling", {"input": "hi", "dimensions": 1000, "encoding_format": fmt})
    assert_error(resp, 400, contains="dimensions")


def test_dimensions_and_normalize_false(tiny_url: str) -> None:
    for extra, width in (({"dimensions": 8}, 8), ({"normalize": False}, 32)):
        body = {"input": TEXTS, **extra}
        expected = floats(tiny_url, "/v1/embeddings", body)
        items, meta = three_ways(tiny_url, "/v1/embeddings", body, "bfloat16", "big")
        check_items(items, expected, "bfloat16", "big")
        assert [d["shape"] for d in meta["data"]] == [[width]] * len(TEXTS)


def test_single_input_and_token_ids(tiny_url: str) -> None:
    for inp in ("hello", [2, 50, 60, 3], [[2, 50, 3], [2, 80, 81, 82, 3]]):
        body = {"input": inp}
        expected = floats(tiny_url, "/pooling", body)
        items, _ = three_ways(tiny_url, "/pooling", body, "float16", "little")
        check_items(items, expected, "float16", "little")


@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
def test_classifier_pooling(classifier_url: str, embed_dtype: str) -> None:
    for extra in ({}, {"activation": False}):
        body = {"input": TEXTS, **extra}
        expected = floats(classifier_url, "/pooling", body)
        items, meta = three_ways(classifier_url, "/pooling", body, embed_dtype, "big")
        check_items(items, expected, embed_dtype, "big")
        assert [d["shape"] for d in meta["data"]] == [[2]] * len(TEXTS)


@pytest.fixture(scope="module")
def decoder_url(tiny: Callable[..., Path]) -> Iterator[str]:
    """A tiny qwen2 sequence classifier (two labels): token_embed and token_classify."""
    with serve_in_thread(make_context(tiny("decoder", "qwen2", "seq-cls", 2))) as url:
        yield url


@pytest.mark.parametrize("embed_dtype", EMBED_DTYPES)
@pytest.mark.parametrize("task", ["token_embed", "token_classify"])
def test_per_token_outputs(decoder_url: str, task: str, embed_dtype: str) -> None:
    """One [tokens, width] item per input, of different lengths, row-major."""
    body = {"input": TEXTS, "task": task}
    expected = floats(decoder_url, "/pooling", body)
    items, meta = three_ways(decoder_url, "/pooling", body, embed_dtype, "little")
    check_items(items, expected, embed_dtype, "little")
    shapes = [d["shape"] for d in meta["data"]]
    assert shapes == [list(e.shape) for e in expected]
    assert len({s[0] for s in shapes}) > 1 and all(len(s) == 2 for s in shapes)


def test_reward_model_rows(tiny: Callable[..., Path]) -> None:
    path = tiny("decoder", "qwen2", "seq-cls", 2)
    with serve_in_thread(make_context(path, task="reward")) as url:
        body = {"input": TEXTS}
        expected = floats(url, "/pooling", body)
        items, meta = three_ways(url, "/pooling", body, "bfloat16", "native")
    check_items(items, expected, "bfloat16", "native")
    assert [d["shape"] for d in meta["data"]] == [list(e.shape) for e in expected]
