"""Limits: each a flag with a sane default, and past it a 413/400 in the error shape.

Body bytes (--max-request-bytes; --max-inflight-bytes for all requests at once), inputs
per request (--max-client-batch-size), tokens per request (--max-request-tokens), token
ids outside the vocabulary, JSON nesting depth, and huge texts (refused or truncated
after tokenizing only a prefix).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from transformers import PreTrainedTokenizerBase

from poolserve.api.body import MAX_JSON_DEPTH
from poolserve.backends.torch.onednn import OneDNNLinear
from poolserve.cli import _config_from, build_parser
from poolserve.config import EngineConfig, ModelConfig, ServerConfig
from poolserve.inputs import processor
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import TIMEOUT, assert_error, ok, post, post_raw, vectors
from tests.fixtures.hardening import control

BODY_LIMIT = 4096
BATCH_LIMIT = 8
TOKEN_LIMIT = 120


@pytest.fixture(scope="module")
def limits_url(tiny: Callable[..., Path]) -> Iterator[str]:
    """A tiny model with small limits: 4 KiB bodies, 8 inputs, 120 tokens a request."""
    ctx = make_context(
        tiny("st"), max_client_batch_size=BATCH_LIMIT, max_request_tokens=TOKEN_LIMIT
    )
    with serve_in_thread(ctx, ServerConfig(max_request_bytes=BODY_LIMIT)) as url:
        yield url


# -- defaults and flags ----------------------------------------------------------------


def test_defaults_are_generous() -> None:
    # API.md: >= 64 concurrent requests, >= 2048 inputs, bodies of >= 32 MiB.
    engine, server = EngineConfig(), ServerConfig()
    assert engine.max_queued_requests >= 64
    assert engine.max_client_batch_size >= 2048
    assert server.max_request_bytes >= 32 * 2**20
    assert server.max_inflight_bytes >= 32 * server.max_request_bytes // 2  # 32 of 32 MiB
    assert engine.max_request_tokens >= 2048 * 512  # 2048 inputs of 512 tokens
    assert server.request_timeout is None  # no timeout unless asked
    assert server.shutdown_grace > 0


def test_limit_flags_parse() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "m",
            "--max-concurrent-requests",
            "5",
            "--max-request-tokens",
            "2k",
            "--max-client-batch-size",
            "7",
            "--max-request-bytes",
            "1M",
            "--request-timeout",
            "2.5",
            "--shutdown-grace",
            "3",
            "--allowed-origins",
            "http://a",
            "--allowed-methods",
            "GET",
            "POST",
            "--allowed-headers",
            "authorization",
            "--allow-credentials",
            "--disable-log-requests",
        ]
    )
    config = _config_from(args)
    assert config.engine.max_queued_requests == 5
    assert config.engine.max_request_tokens == 2000
    assert config.engine.max_client_batch_size == 7
    assert config.server.max_request_bytes == 2**20
    assert config.server.request_timeout == 2.5
    assert config.server.shutdown_grace == 3.0
    assert config.server.allowed_methods == ("GET", "POST")
    assert config.server.allowed_headers == ("authorization",)
    assert config.server.allow_credentials and config.server.disable_log_requests
    # The vLLM-era name and ours set the same field.
    args = build_parser().parse_args(["serve", "--max-queued-requests", "9"])
    assert _config_from(args).engine.max_queued_requests == 9


# -- body bytes -------------------------------------------------------------------------


def test_body_over_the_limit_is_413(limits_url: str) -> None:
    body = {"input": "x", "pad": "y" * BODY_LIMIT}
    assert_error(post(limits_url, "/v1/embeddings", body), 413, contains="--max-request-bytes")


def test_chunked_body_over_the_limit_is_413(limits_url: str) -> None:
    # No Content-Length: the limit holds while the body streams in.
    def chunks() -> Iterator[bytes]:
        yield b'{"input": "x", "pad": "'
        for _ in range(BODY_LIMIT // 512 + 2):
            yield b"y" * 512
        yield b'"}'

    resp = post_raw(limits_url, "/v1/embeddings", chunks())
    assert_error(resp, 413, contains="--max-request-bytes")


def padded_body(size: int) -> bytes:
    """A valid embeddings body of exactly ``size`` bytes."""
    prefix = b'{"input": "x", "pad": "'
    return prefix + b"y" * (size - len(prefix) - 2) + b'"}'


def test_body_at_the_limit_is_accepted(limits_url: str) -> None:
    data = padded_body(BODY_LIMIT)
    assert len(data) == BODY_LIMIT
    resp = post_raw(limits_url, "/v1/embeddings", data)
    ok(resp)


# -- body bytes held by all requests at once ---------------------------------------------

HELD_LIMIT = 3000


@pytest.fixture
def held_server(tiny: Callable[..., Path]) -> Iterator[tuple[str, Any]]:
    """Forwards wait on a gate; admitted requests may hold 3,000 body bytes between them."""
    ctx = make_context(tiny("st"))
    backend = control(ctx, gate=threading.Event())
    with serve_in_thread(ctx, ServerConfig(max_inflight_bytes=HELD_LIMIT)) as url:
        try:
            yield url, backend
        finally:
            assert backend.gate is not None
            backend.gate.set()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_held_past_the_budget_get_429(held_server: tuple[str, Any], chunked: bool) -> None:
    url, backend = held_server

    def send(data: bytes) -> requests.Response:
        payload: Any = iter([data[:100], data[100:]]) if chunked else data
        return post_raw(url, "/v1/embeddings", payload)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(send, padded_body(2000))  # admitted; held at the gate
        assert backend.entered.wait(TIMEOUT)
        resp = send(padded_body(1500))  # 2,000 + 1,500 > 3,000
        err = assert_error(resp, 429, contains="--max-inflight-bytes")
        assert err["type"] == "Overloaded"
        assert int(resp.headers["retry-after"]) >= 1
        backend.gate.set()
        ok(first.result(timeout=TIMEOUT))
    # Answered requests give their bytes back.
    ok(send(padded_body(2900)))


# -- inputs and tokens per request ------------------------------------------------------


def test_inputs_over_the_limit_are_413(limits_url: str) -> None:
    ok(post(limits_url, "/v1/embeddings", {"input": ["a"] * BATCH_LIMIT}))
    resp = post(limits_url, "/v1/embeddings", {"input": ["a"] * (BATCH_LIMIT + 1)})
    assert_error(resp, 413, contains="--max-client-batch-size")
    resp = post(limits_url, "/pooling", {"input": [[5, 6]] * (BATCH_LIMIT + 1)})
    assert_error(resp, 413, contains="--max-client-batch-size")


def test_tokens_over_the_limit_are_413(limits_url: str) -> None:
    # Token-id input: exactly what the model gets.
    ok(post(limits_url, "/v1/embeddings", {"input": [[5] * 60, [6] * 60]}))
    resp = post(limits_url, "/v1/embeddings", {"input": [[5] * 60, [6] * 61]})
    err = assert_error(resp, 413, contains="--max-request-tokens")
    assert "121 tokens" in err["message"]
    # Texts: counted after tokenization, special tokens included.
    resp = post(limits_url, "/pooling", {"input": ["hello world " * 10] * 6})
    assert_error(resp, 413, contains="--max-request-tokens")


def test_tokenize_is_held_to_the_token_limit(limits_url: str) -> None:
    ok(post(limits_url, "/tokenize", {"prompt": "hello " * 50}))
    resp = post(limits_url, "/tokenize", {"prompt": "hello " * 200})
    assert_error(resp, 413, contains="--max-request-tokens")


def test_tokenize_refuses_a_huge_prompt_after_a_prefix(tiny_url: str) -> None:
    # 20 MB of text: measured on a prefix, refused fast (the default limit is 1M tokens).
    started = time.monotonic()
    resp = post(tiny_url, "/tokenize", {"prompt": "hello world " * 1_800_000})
    assert_error(resp, 413, contains="--max-request-tokens")
    assert time.monotonic() - started < 15


# -- token ids outside the vocabulary ---------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -(2**31), "vocab", 2**31, 2**40, 2**63 - 1])
@pytest.mark.parametrize("path", ["/v1/embeddings", "/pooling", "/detokenize"])
def test_token_ids_outside_the_vocabulary_are_400(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase, path: str, bad: Any
) -> None:
    token = len(tiny_tok) if bad == "vocab" else bad
    body = {"tokens": [5, token]} if path == "/detokenize" else {"input": [5, token]}
    err = assert_error(post(tiny_url, path, body), 400)
    assert err["param"] in {"input", "tokens"}


@pytest.mark.parametrize("path", ["/v1/embeddings", "/detokenize"])
def test_token_ids_beyond_64_bits_are_400(tiny_url: str, path: str) -> None:
    field = "tokens" if path == "/detokenize" else "input"
    data = b'{"%s": [5, 99999999999999999999999999]}' % field.encode()
    resp = post_raw(tiny_url, path, data)
    assert_error(resp, 400)


# -- JSON nesting depth -----------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A body whose ``extra`` field makes the whole JSON ``depth`` levels deep."""
    inner = depth - 1  # the body object is the first level
    return b'{"input": "hi", "extra": ' + b"[" * inner + b"]" * inner + b"}"


def test_nesting_up_to_the_limit_is_accepted(tiny_url: str) -> None:
    data = nested(MAX_JSON_DEPTH)
    resp = post_raw(tiny_url, "/v1/embeddings", data)
    ok(resp)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500, 1100, 10_000])
def test_deeper_nesting_is_400(tiny_url: str, depth: int) -> None:
    resp = post_raw(tiny_url, "/v1/embeddings", nested(depth))
    assert_error(resp, 400)


def test_brackets_inside_strings_are_not_nesting(tiny_url: str) -> None:
    body = {"input": "[" * 5000 + "{" * 5000, "truncate_prompt_tokens": -1}
    ok(post(tiny_url, "/v1/embeddings", body))


def test_many_shallow_lists_are_not_deep(tiny_url: str) -> None:
    ok(post(tiny_url, "/v1/embeddings", {"input": [[5, 6, 7]] * 2000}))


# -- huge texts cost a prefix, not their size -------------------------------------------


def test_a_huge_text_is_refused_fast(tiny_url: str) -> None:
    started = time.monotonic()
    resp = post(tiny_url, "/v1/embeddings", {"input": "hello world " * 500_000})  # 6 MB
    err = assert_error(resp, 400, contains="maximum context length is 64 tokens")
    assert "more than" in err["message"]
    assert time.monotonic() - started < 5


def test_a_moderately_long_text_keeps_the_exact_count(tiny_url: str) -> None:
    text = "hello world " * 1000  # 12k characters: tokenized whole
    err = assert_error(post(tiny_url, "/v1/embeddings", {"input": text}), 400)
    assert "you requested 2002 tokens" in err["message"]


@pytest.mark.parametrize("k", [-1, 10])
def test_truncating_a_huge_text_equals_truncating_its_head(tiny_url: str, k: int) -> None:
    words = "the quick brown fox jumps over the lazy dog ".split()
    head = " ".join(words[i % len(words)] for i in range(3000))  # ~13k characters
    huge = head + " tail" * 2_000_000
    got = vectors(
        ok(post(tiny_url, "/v1/embeddings", {"input": huge, "truncate_prompt_tokens": k}))
    )
    want = vectors(
        ok(post(tiny_url, "/v1/embeddings", {"input": head, "truncate_prompt_tokens": k}))
    )
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_score_pairs_with_a_huge_document(cross_url: str) -> None:
    head = "the quick brown fox jumps over the lazy dog " * 400
    huge = head + "tail " * 2_000_000
    refused = post(cross_url, "/score", {"text_1": "q", "text_2": huge})
    if refused.status_code == 404:
        pytest.skip("no /score route")
    assert_error(refused, 400, contains="maximum context length")
    body = {"text_1": "fox", "text_2": [huge, head], "truncate_prompt_tokens": -1}
    scores = [d["score"] for d in ok(post(cross_url, "/score", body))["data"]]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


def test_slices_bound_each_encode() -> None:
    texts = ["a" * 1000] * 200 + ["b" * (3 * processor._SLICE_CHARS)] + ["c"] * 5
    parts = processor._slices(texts)
    assert [t for part in parts for t in part] == texts
    for part in parts:
        assert len(part) == 1 or sum(map(len, part)) <= processor._SLICE_CHARS


# -- memory: the oneDNN Linear layers are opt-in -----------------------------------------


def test_onednn_linear_is_opt_in(tiny: Callable[..., Path]) -> None:
    assert ModelConfig().onednn_linear is False  # their per-shape caches grow memory
    args = build_parser().parse_args(["serve", "m", "--onednn-linear"])
    assert _config_from(args).model.onednn_linear is True

    def swapped(ctx: Any) -> int:
        return sum(isinstance(m, OneDNNLinear) for m in ctx.engine.backend.model.modules())

    # a torch-backend option
    plain = make_context(tiny("st"), backend="torch")
    fast = make_context(tiny("st"), backend="torch", onednn_linear=True)
    assert swapped(plain) == 0
    assert swapped(fast) > 0 or not torch.backends.mkldnn.is_available()
