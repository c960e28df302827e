"""POST /v1/embeddings (and /embeddings), completion form, with plain requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from transformers import PreTrainedTokenizerBase

from poolserve.api.app import create_app
from tests.conftest import make_context
from tests.contract.util import (
    DEFAULT_MAX_LEN,
    DEFAULT_NAME,
    TINY_MAX_LEN,
    TINY_NAMES,
    assert_error,
    context_message,
    decode,
    expected_usage,
    ok,
    post,
    unit,
    vectors,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world", "A man is eating food."]
LONG = "word " * 100  # 102 tokens with [CLS]/[SEP]: over the tiny model's 64


def ids_of(tok: PreTrainedTokenizerBase, text: str, **kwargs: Any) -> list[int]:
    return list(tok(text, **kwargs)["input_ids"])


# -- response shape ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
def test_response_shape(tiny_url: str, tiny_tok: PreTrainedTokenizerBase, path: str) -> None:
    before = int(time.time())
    body = ok(post(tiny_url, path, {"input": TEXTS[0], "model": TINY_NAMES[0]}))
    after = int(time.time())
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["object"] == "list"
    assert body["id"].startswith("embd-") and len(body["id"]) > len("embd-")
    assert isinstance(body["created"], int) and before <= body["created"] <= after
    assert body["model"] == TINY_NAMES[0]
    [item] = body["data"]
    assert set(item) == {"index", "object", "embedding"}
    assert item["index"] == 0 and item["object"] == "embedding"
    assert len(item["embedding"]) == 32
    assert all(isinstance(x, float) for x in item["embedding"])
    assert body["usage"] == expected_usage(len(ids_of(tiny_tok, TEXTS[0])))


def test_alias_gives_the_same_answer(tiny_url: str) -> None:
    a = vectors(ok(post(tiny_url, "/v1/embeddings", {"input": TEXTS})))
    b = vectors(ok(post(tiny_url, "/embeddings", {"input": TEXTS})))
    np.testing.assert_array_equal(a, b)


def test_default_model_is_normalized(
    default_url: str, default_tok: PreTrainedTokenizerBase
) -> None:
    body = ok(post(default_url, "/v1/embeddings", {"input": TEXTS}))
    assert body["model"] == DEFAULT_NAME
    vecs = vectors(body)
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    n = sum(len(ids_of(default_tok, t)) for t in TEXTS)
    assert body["usage"] == expected_usage(n)


# -- request id -------------------------------------------------------------------------


def test_request_id_header_is_echoed_and_used(tiny_url: str) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi"}, headers={"X-Request-Id": "abc-123"})
    assert ok(resp)["id"] == "embd-abc-123"
    assert resp.headers["x-request-id"] == "abc-123"


def test_request_id_is_random_without_header(tiny_url: str) -> None:
    ids = set()
    for _ in range(2):
        resp = post(tiny_url, "/v1/embeddings", {"input": "hi"})
        rid = ok(resp)["id"]
        assert rid.startswith("embd-")
        # The generated id is also sent back as the X-Request-Id header.
        assert rid == f"embd-{resp.headers['x-request-id']}"
        ids.add(rid)
    assert len(ids) == 2


# -- model names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [(None, TINY_NAMES[0]), ("", TINY_NAMES[0])] + [(n, n) for n in TINY_NAMES],
)
def test_model_echo(tiny_url: str, sent: str | None, echoed: str) -> None:
    body = ok(post(tiny_url, "/v1/embeddings", {"input": "hi", "model": sent}))
    assert body["model"] == echoed


def test_model_omitted(tiny_url: str) -> None:
    assert ok(post(tiny_url, "/v1/embeddings", {"input": "hi"}))["model"] == TINY_NAMES[0]


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings", "/pooling"])
def test_unknown_model_is_404(tiny_url: str, path: str) -> None:
    resp = post(tiny_url, path, {"input": "hi", "model": "nope"})
    assert_error(resp, 404, message="The model `nope` does not exist.")


def test_default_served_name(default_url: str) -> None:
    body = ok(post(default_url, "/v1/embeddings", {"input": "hi", "model": DEFAULT_NAME}))
    assert body["model"] == DEFAULT_NAME
    assert_error(post(default_url, "/v1/embeddings", {"input": "hi", "model": "tiny-a"}), 404)


# -- input shapes -----------------------------------------------------------------------


def test_input_shapes_agree(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ids = [ids_of(tiny_tok, t) for t in TEXTS]
    one_text = ok(post(tiny_url, "/v1/embeddings", {"input": TEXTS[0]}))
    many_texts = ok(post(tiny_url, "/v1/embeddings", {"input": TEXTS}))
    one_ids = ok(post(tiny_url, "/v1/embeddings", {"input": ids[0]}))
    many_ids = ok(post(tiny_url, "/v1/embeddings", {"input": ids}))

    assert len(one_text["data"]) == len(one_ids["data"]) == 1
    assert len(many_texts["data"]) == len(many_ids["data"]) == 3
    np.testing.assert_allclose(vectors(one_text), vectors(one_ids), atol=1e-6)
    np.testing.assert_allclose(vectors(many_texts), vectors(many_ids), atol=1e-6)
    # Input order is kept; batching does not change a result.
    for i, text in enumerate(TEXTS):
        single = vectors(ok(post(tiny_url, "/v1/embeddings", {"input": text})))[0]
        np.testing.assert_allclose(vectors(many_texts)[i], single, atol=1e-5)
    assert not np.allclose(vectors(many_texts)[0], vectors(many_texts)[1], atol=1e-3)

    total = sum(len(x) for x in ids)
    assert many_texts["usage"] == many_ids["usage"] == expected_usage(total)
    assert one_ids["usage"] == expected_usage(len(ids[0]))


def test_add_special_tokens_false(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    body = ok(post(tiny_url, "/v1/embeddings", {"input": TEXTS[0], "add_special_tokens": False}))
    bare = ids_of(tiny_tok, TEXTS[0], add_special_tokens=False)
    assert body["usage"]["prompt_tokens"] == len(bare)
    np.testing.assert_allclose(
        vectors(body), vectors(ok(post(tiny_url, "/v1/embeddings", {"input": bare}))), atol=1e-6
    )


@pytest.mark.parametrize("path", ["/v1/embeddings", "/pooling"])
@pytest.mark.parametrize("inp", [[], [[]]])
def test_empty_input_is_400(tiny_url: str, path: str, inp: Any) -> None:
    assert_error(
        post(tiny_url, path, {"input": inp}),
        400,
        contains="please provide at least one prompt",
    )


def test_missing_input_is_400(tiny_url: str) -> None:
    assert_error(post(tiny_url, "/v1/embeddings", {"model": TINY_NAMES[0]}), 400, contains="input")


@pytest.mark.parametrize("which", ["negative", "vocab_size", "huge"])
@pytest.mark.parametrize("nested", [False, True])
def test_token_id_out_of_vocab_is_400(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase, which: str, nested: bool
) -> None:
    bad = {"negative": -1, "vocab_size": len(tiny_tok), "huge": 10**6}[which]
    inp: Any = [[2, 5, 3], [2, bad, 3]] if nested else [2, bad, 3]
    assert_error(post(tiny_url, "/v1/embeddings", {"input": inp}), 400, contains=str(bad))


def test_last_vocab_id_is_accepted(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ok(post(tiny_url, "/v1/embeddings", {"input": [0, len(tiny_tok) - 1]}))


def test_many_inputs_in_one_request(tiny_url: str) -> None:
    body = ok(post(tiny_url, "/v1/embeddings", {"input": ["hello world"] * 2048}))
    assert len(body["data"]) == 2048
    assert [d["index"] for d in body["data"]] == list(range(2048))


def test_too_many_inputs_is_413(tiny_url: str) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": ["a"] * 4097})
    assert_error(resp, 413)


def test_concurrent_requests_are_admitted(tiny_url: str) -> None:
    def one(i: int) -> int:
        return post(tiny_url, "/v1/embeddings", {"input": f"text number {i}"}).status_code

    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(one, range(64)))
    assert statuses == [200] * 64


# -- encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/embeddings", "/pooling"])
def test_base64_equals_float(tiny_url: str, path: str) -> None:
    key = "embedding" if path == "/v1/embeddings" else "data"
    floats = ok(post(tiny_url, path, {"input": TEXTS, "encoding_format": "float"}))
    b64 = ok(post(tiny_url, path, {"input": TEXTS, "encoding_format": "base64"}))
    assert all(isinstance(d[key], str) for d in b64["data"])
    decoded = np.stack([decode(d[key]) for d in sorted(b64["data"], key=lambda d: d["index"])])
    np.testing.assert_array_equal(decoded, vectors(floats, key))
    assert b64["usage"] == floats["usage"]


# -- switches ---------------------------------------------------------------------------


def test_normalize_false_gives_raw_vectors(tiny_embed: Callable[..., np.ndarray]) -> None:
    normed = tiny_embed(TEXTS)
    raw = tiny_embed(TEXTS, normalize=False)
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1.0) > 1e-2), norms
    np.testing.assert_allclose(unit(raw), normed, atol=1e-5)
    np.testing.assert_allclose(tiny_embed(TEXTS, normalize=True), normed, atol=1e-6)
    np.testing.assert_allclose(tiny_embed(TEXTS, use_activation=False), raw, atol=1e-6)


@pytest.mark.parametrize("switch", ["activation", "softmax"])
@pytest.mark.parametrize("path", ["/v1/embeddings", "/pooling"])
def test_switches_of_other_tasks_are_400(tiny_url: str, switch: str, path: str) -> None:
    for value in (True, False):
        resp = post(tiny_url, path, {"input": "hi", switch: value})
        assert_error(resp, 400, contains=switch)


def test_priority(tiny_url: str) -> None:
    ok(post(tiny_url, "/v1/embeddings", {"input": "hi", "priority": 0}))
    for value in (1, -1):
        resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "priority": value})
        assert_error(resp, 400, contains="priority")


def test_user_and_unknown_fields_are_ignored(tiny_embed: Callable[..., np.ndarray]) -> None:
    plain = tiny_embed("hi")
    extra = tiny_embed("hi", user="someone", foo=1, extra={"a": [1]}, service_tier="auto")
    np.testing.assert_array_equal(plain, extra)


# -- length and truncation --------------------------------------------------------------


def test_over_length_text_is_400_word_for_word(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase
) -> None:
    n = len(ids_of(tiny_tok, LONG))
    assert n > TINY_MAX_LEN
    resp = post(tiny_url, "/v1/embeddings", {"input": ["hi", LONG]})
    assert_error(resp, 400, message=context_message(TINY_MAX_LEN, n))


def test_over_length_token_ids_is_400(tiny_url: str) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": [7] * (TINY_MAX_LEN + 1)})
    assert_error(resp, 400, message=context_message(TINY_MAX_LEN, TINY_MAX_LEN + 1))


def test_exactly_max_length_is_accepted(tiny_url: str) -> None:
    body = ok(post(tiny_url, "/v1/embeddings", {"input": [7] * TINY_MAX_LEN}))
    assert body["usage"]["prompt_tokens"] == TINY_MAX_LEN


def test_over_length_on_default_model(
    default_url: str, default_tok: PreTrainedTokenizerBase
) -> None:
    text = "hello " * 300
    n = len(ids_of(default_tok, text))
    resp = post(default_url, "/v1/embeddings", {"input": text})
    assert_error(resp, 400, message=context_message(DEFAULT_MAX_LEN, n))


def test_truncate_minus_one_cuts_to_max_length(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase
) -> None:
    body = ok(post(tiny_url, "/v1/embeddings", {"input": LONG, "truncate_prompt_tokens": -1}))
    assert body["usage"] == expected_usage(TINY_MAX_LEN)
    cut = ids_of(tiny_tok, LONG, truncation=True, max_length=TINY_MAX_LEN)
    assert len(cut) == TINY_MAX_LEN and cut[-1] == tiny_tok.sep_token_id
    np.testing.assert_allclose(
        vectors(body), vectors(ok(post(tiny_url, "/v1/embeddings", {"input": cut}))), atol=1e-6
    )


@pytest.mark.parametrize("k", [1, 5, 12])
def test_truncate_k_keeps_first_k_tokens_of_text(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase, k: int
) -> None:
    text = TEXTS[0]  # 12 tokens with specials
    body = ok(post(tiny_url, "/v1/embeddings", {"input": text, "truncate_prompt_tokens": k}))
    # k counts every token the model sees, special tokens included.
    assert body["usage"] == expected_usage(k)
    # The tokenizer's own truncation, cut further when k is below its special tokens.
    cut = ids_of(tiny_tok, text, truncation=True, max_length=k)[:k]
    assert len(cut) == k
    np.testing.assert_allclose(
        vectors(body), vectors(ok(post(tiny_url, "/v1/embeddings", {"input": cut}))), atol=1e-6
    )


def test_truncate_k_keeps_last_k_token_ids(tiny_url: str) -> None:
    ids = list(range(10, 90))  # 80 ids: over the max length too
    body = ok(post(tiny_url, "/v1/embeddings", {"input": ids, "truncate_prompt_tokens": 7}))
    assert body["usage"] == expected_usage(7)
    last = ok(post(tiny_url, "/v1/embeddings", {"input": ids[-7:]}))
    np.testing.assert_allclose(vectors(body), vectors(last), atol=1e-6)
    first = ok(post(tiny_url, "/v1/embeddings", {"input": ids[:7]}))
    assert not np.allclose(vectors(body), vectors(first), atol=1e-3)


def test_truncate_larger_than_input_changes_nothing(tiny_embed: Callable[..., Any]) -> None:
    np.testing.assert_allclose(
        tiny_embed(TEXTS, truncate_prompt_tokens=TINY_MAX_LEN), tiny_embed(TEXTS), atol=1e-6
    )


@pytest.mark.parametrize("k", [TINY_MAX_LEN + 1, 10_000])
def test_truncate_over_max_length_is_400(tiny_url: str, k: int) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "truncate_prompt_tokens": k})
    assert_error(resp, 400, contains="truncate_prompt_tokens")


@pytest.mark.parametrize("k", [0, -2, "5", 1.5])
def test_truncate_bad_values_are_400(tiny_url: str, k: Any) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "truncate_prompt_tokens": k})
    assert_error(resp, 400, contains="truncate_prompt_tokens")


async def test_auto_truncate_flag(
    tiny: Callable[..., Path], tiny_tok: PreTrainedTokenizerBase
) -> None:
    # --auto-truncate (beyond vLLM): over-long inputs are cut to the max length, no 400.
    ctx = make_context(tiny("st"), auto_truncate=True)
    transport = httpx.ASGITransport(app=create_app(ctx))
    await ctx.engine.start()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            resp = await client.post("/v1/embeddings", json={"input": ["hi", LONG]})
            cut = ids_of(tiny_tok, LONG, truncation=True, max_length=TINY_MAX_LEN)
            ref = await client.post("/v1/embeddings", json={"input": cut})
    finally:
        await ctx.engine.stop()
    assert resp.status_code == 200, resp.text
    n = len(ids_of(tiny_tok, "hi")) + TINY_MAX_LEN
    assert resp.json()["usage"] == expected_usage(n)
    np.testing.assert_allclose(
        np.asarray(resp.json()["data"][1]["embedding"]),
        np.asarray(ref.json()["data"][0]["embedding"]),
        atol=1e-6,
    )


def test_body_request_id_names_the_response_without_header(tiny_url: str) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "request_id": "mine-7"})
    assert ok(resp)["id"] == "embd-mine-7"
    # The header still wins over the body.
    resp = requests.post(
        tiny_url + "/v1/embeddings",
        json={"input": "hi", "request_id": "mine-7"},
        headers={"X-Request-Id": "hdr-1"},
        timeout=30,
    )
    assert ok(resp)["id"] == "embd-hdr-1"
