"""Helpers of the contract tests: the error-shape check and small request wrappers."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import requests

TINY_NAMES = ("tiny-a", "tiny-b")
TINY_MAX_LEN = 64  # the tiny ST folder's max_seq_length
DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_LEN = 256
API_KEY = "k"
CROSS_NAME = "BAAI/bge-reranker-v2-m3"  # the tiny cross-encoder's served name
CROSS_MAX_LEN = 128  # the tiny cross-encoder's max_position_embeddings
MRL_LIST = (8, 16)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if shout %}LOUD\n{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
OTHER_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
SERVER_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}; {% endfor %}"
TIMEOUT = 30

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestTooLarge",
    503: "Overloaded",
}


def post(url: str, path: str, body: Any, **kwargs: Any) -> requests.Response:
    """POST ``body`` as JSON."""
    return requests.post(url + path, json=body, timeout=TIMEOUT, **kwargs)


def post_raw(url: str, path: str, data: Any) -> requests.Response:
    """POST ``data`` (bytes, or an iterator of chunks: sent chunked) labelled as JSON."""
    return requests.post(
        url + path, data=data, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )


def ok(resp: requests.Response) -> dict[str, Any]:
    """The JSON body of a 200 answer (fails with the body otherwise)."""
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def assert_error(
    resp: requests.Response,
    status: int,
    *,
    contains: str | tuple[str, ...] = (),
    param: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Check the OpenAI error shape, HTTP status == code, and the message; return the error."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status
    assert isinstance(err["message"], str) and err["message"]
    assert err["param"] is None or isinstance(err["param"], str)
    if status in ERROR_TYPES:
        assert err["type"] == ERROR_TYPES[status], err
    if message is not None:
        assert err["message"] == message
    for part in (contains,) if isinstance(contains, str) else contains:
        assert part in err["message"], err["message"]
    if param is not None:
        assert err["param"] == param, err
    return dict(err)


# Routes that answer errors in TEI's shape (docs/tei.md): TEI's own, and the paths
# where a TEI-shaped body is told apart from the vLLM / Jina one.
TEI_ROUTES = frozenset(
    {"/", "/embed", "/embed_all", "/embed_sparse", "/predict", "/similarity", "/decode"}
)
TEI_BODY_ROUTES = frozenset({"/rerank", "/v1/rerank", "/v2/rerank", "/tokenize"})
TEI_ERROR_TYPES = {"Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"}


def assert_tei_error(
    resp: requests.Response,
    status: int,
    error_type: str | None = None,
    message: str | None = None,
) -> str:
    """TEI's error shape, exactly ``{"error": str, "error_type": str}``; the message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] in TEI_ERROR_TYPES, body
    assert isinstance(body["error"], str) and body["error"]
    if error_type is not None:
        assert body["error_type"] == error_type, body
    if message is not None:
        assert body["error"] == message
    return str(body["error"])


def tei_ok(resp: requests.Response) -> Any:
    """The JSON of a 200 TEI answer (fails with the body otherwise)."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return resp.json()


def assert_route_error(resp: requests.Response, path: str, status: int) -> None:
    """The error shape ``path`` answers in: TEI's on the TEI routes (and for TEI bodies
    on the shared paths) when the route answered; the OpenAI shape otherwise (the
    gateway's 401 / 413 / 429, a 405, and every other route)."""
    try:
        tei_shaped = "error_type" in resp.json()
    except ValueError:
        tei_shaped = False
    if path in TEI_ROUTES | TEI_BODY_ROUTES and tei_shaped:
        assert_tei_error(resp, status)
    else:
        assert_error(resp, status)


def vectors(body: dict[str, Any], key: str = "embedding") -> np.ndarray:
    """The float vectors of a response, in index order, as float32 [n, dim]."""
    items = sorted(body["data"], key=lambda d: d["index"])
    assert [d["index"] for d in items] == list(range(len(items)))
    rows = [decode(d[key]) if isinstance(d[key], str) else d[key] for d in items]
    return np.asarray(rows, dtype=np.float32)


def decode(b64: str) -> np.ndarray:
    """API.md's base64: little-endian float32 bytes."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def embed(url: str, inp: Any, **fields: Any) -> np.ndarray:
    """Embed ``inp`` through /v1/embeddings (float encoding)."""
    return vectors(ok(post(url, "/v1/embeddings", {"input": inp, **fields})))


def expected_usage(n: int) -> dict[str, Any]:
    """The usage block for ``n`` prompt tokens."""
    return {
        "prompt_tokens": n,
        "total_tokens": n,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


def unit(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalized."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def context_message(max_len: int, n: int, purpose: str = "embedding generation") -> str:
    """vLLM's over-length message, word for word (API.md)."""
    return (
        f"This model's maximum context length is {max_len} tokens. However, you requested "
        f"{n} tokens in the input for {purpose}. Please reduce the length of the input."
    )


def scores(body: dict[str, Any]) -> np.ndarray:
    """The scores of a /score response, in index order (checking the item shape)."""
    items = body["data"]
    assert [d["index"] for d in items] == list(range(len(items)))
    assert all(d["object"] == "score" and set(d) == {"index", "object", "score"} for d in items)
    return np.asarray([d["score"] for d in items], dtype=np.float64)
