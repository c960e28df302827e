"""The chat (`messages`) form of /v1/embeddings, /pooling and /tokenize."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from tests.contract.util import (
    OTHER_TEMPLATE,
    SERVER_TEMPLATE,
    TINY_MAX_LEN,
    assert_error,
    context_message,
    expected_usage,
    ok,
    post,
    vectors,
)

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "The cat sits."},
    {"role": "assistant", "content": "Yes."},
]


def chat_ids(
    tok: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    *,
    add_special_tokens: bool = False,
    **render: Any,
) -> list[int]:
    """Render the template, then tokenize (no special tokens unless asked): the reference."""
    text = tok.apply_chat_template(messages, tokenize=False, **render)
    assert isinstance(text, str)
    return list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])


def embed_ids(url: str, ids: list[int]) -> np.ndarray:
    return vectors(ok(post(url, "/v1/embeddings", {"input": ids})))


@pytest.mark.parametrize(("path", "key"), [("/v1/embeddings", "embedding"), ("/pooling", "data")])
def test_chat_equals_render_then_tokenize(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase, path: str, key: str
) -> None:
    ids = chat_ids(tiny_tok, MESSAGES, add_generation_prompt=False)
    body = ok(post(tiny_url, path, {"messages": MESSAGES}))
    assert len(body["data"]) == 1  # the whole conversation is ONE prompt
    assert body["usage"] == expected_usage(len(ids))
    assert ids[0] != tiny_tok.cls_token_id and ids[-1] != tiny_tok.sep_token_id
    np.testing.assert_allclose(vectors(body, key), embed_ids(tiny_url, ids), atol=1e-6)


def test_chat_response_shape(tiny_url: str) -> None:
    body = ok(post(tiny_url, "/v1/embeddings", {"messages": MESSAGES}))
    assert body["id"].startswith("embd-") and body["object"] == "list"
    assert body["data"][0]["object"] == "embedding"
    body = ok(post(tiny_url, "/pooling", {"messages": MESSAGES}))
    assert body["id"].startswith("pool-") and body["data"][0]["object"] == "pooling"


def test_chat_add_special_tokens(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ids = chat_ids(tiny_tok, MESSAGES, add_special_tokens=True)
    assert ids[0] == tiny_tok.cls_token_id
    body = ok(post(tiny_url, "/v1/embeddings", {"messages": MESSAGES, "add_special_tokens": True}))
    assert body["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vectors(body), embed_ids(tiny_url, ids), atol=1e-6)


def test_chat_add_generation_prompt(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ids = chat_ids(tiny_tok, MESSAGES, add_generation_prompt=True)
    assert ids != chat_ids(tiny_tok, MESSAGES, add_generation_prompt=False)
    req = {"messages": MESSAGES, "add_generation_prompt": True}
    body = ok(post(tiny_url, "/v1/embeddings", req))
    assert body["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vectors(body), embed_ids(tiny_url, ids), atol=1e-6)


def test_chat_template_kwargs(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ids = chat_ids(tiny_tok, MESSAGES, shout=True)
    assert ids != chat_ids(tiny_tok, MESSAGES)
    req = {"messages": MESSAGES, "chat_template_kwargs": {"shout": True}}
    body = ok(post(tiny_url, "/v1/embeddings", req))
    assert body["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vectors(body), embed_ids(tiny_url, ids), atol=1e-6)


def test_request_template_beats_tokenizer_template(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase
) -> None:
    ids = chat_ids(tiny_tok, MESSAGES, chat_template=OTHER_TEMPLATE)
    req = {"messages": MESSAGES, "chat_template": OTHER_TEMPLATE}
    body = ok(post(tiny_url, "/v1/embeddings", req))
    assert body["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vectors(body), embed_ids(tiny_url, ids), atol=1e-6)


def test_server_template_and_request_template(
    flags_url: str, tiny_tok: PreTrainedTokenizerBase
) -> None:
    # flags_url's tokenizer has no template; --chat-template gives one.
    ids = chat_ids(tiny_tok, MESSAGES, chat_template=SERVER_TEMPLATE)
    body = ok(post(flags_url, "/v1/embeddings", {"messages": MESSAGES}))
    assert body["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vectors(body), embed_ids(flags_url, ids), atol=1e-6)
    # The request's template beats the server's.
    ids = chat_ids(tiny_tok, MESSAGES, chat_template=OTHER_TEMPLATE)
    req = {"messages": MESSAGES, "chat_template": OTHER_TEMPLATE}
    body = ok(post(flags_url, "/v1/embeddings", req))
    assert body["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(vectors(body), embed_ids(flags_url, ids), atol=1e-6)


def test_text_parts_are_joined_with_newlines(tiny_url: str) -> None:
    parts = [{"type": "text", "text": "The cat sits."}, {"type": "text", "text": "On the mat."}]
    as_parts = ok(
        post(tiny_url, "/v1/embeddings", {"messages": [{"role": "user", "content": parts}]})
    )
    joined = [{"role": "user", "content": "The cat sits.\nOn the mat."}]
    as_text = ok(post(tiny_url, "/v1/embeddings", {"messages": joined}))
    assert as_parts["usage"] == as_text["usage"]
    np.testing.assert_array_equal(vectors(as_parts), vectors(as_text))


def test_chat_over_length_is_400(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "user", "content": "word " * 80}]
    n = len(chat_ids(tiny_tok, messages))
    assert n > TINY_MAX_LEN
    resp = post(tiny_url, "/v1/embeddings", {"messages": messages})
    assert_error(resp, 400, message=context_message(TINY_MAX_LEN, n))
    body = ok(post(tiny_url, "/v1/embeddings", {"messages": messages, "truncate_prompt_tokens": 9}))
    assert body["usage"] == expected_usage(9)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/pooling", "/tokenize"])
def test_no_chat_template_is_400(default_url: str, path: str) -> None:
    assert_error(post(default_url, path, {"messages": MESSAGES}), 400, contains="template")


@pytest.mark.parametrize(
    "messages",
    ["hello", [{"content": "no role"}], [{"role": "user", "content": 5}], [1]],
)
def test_malformed_messages_are_400(tiny_url: str, messages: Any) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"messages": messages})
    assert_error(resp, 400, contains="messages")


# -- /tokenize, chat form ---------------------------------------------------------------


def test_tokenize_chat_defaults(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    # Chat form defaults: add_generation_prompt true, add_special_tokens false.
    ids = chat_ids(tiny_tok, MESSAGES, add_generation_prompt=True)
    body = ok(post(tiny_url, "/tokenize", {"messages": MESSAGES}))
    assert body == {
        "count": len(ids),
        "max_model_len": TINY_MAX_LEN,
        "tokens": ids,
        "token_strs": None,
    }


def test_tokenize_chat_options(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    req = {
        "messages": MESSAGES,
        "add_generation_prompt": False,
        "add_special_tokens": True,
        "chat_template": OTHER_TEMPLATE,
        "return_token_strs": True,
    }
    ids = chat_ids(
        tiny_tok,
        MESSAGES,
        add_special_tokens=True,
        add_generation_prompt=False,
        chat_template=OTHER_TEMPLATE,
    )
    body = ok(post(tiny_url, "/tokenize", req))
    assert body["tokens"] == ids and body["count"] == len(ids)
    assert body["token_strs"] == tiny_tok.convert_ids_to_tokens(ids)
