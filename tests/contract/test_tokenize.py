"""POST /tokenize (prompt form) and POST /detokenize."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from tests.contract.util import (
    DEFAULT_MAX_LEN,
    TINY_MAX_LEN,
    TINY_NAMES,
    assert_error,
    ok,
    post,
)

TEXT = "Hello world, this is a small test sentence."


def test_tokenize_prompt(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ids = list(tiny_tok(TEXT)["input_ids"])
    body = ok(post(tiny_url, "/tokenize", {"prompt": TEXT}))
    assert body == {
        "count": len(ids),
        "max_model_len": TINY_MAX_LEN,
        "tokens": ids,
        "token_strs": None,
    }
    assert ids[0] == tiny_tok.cls_token_id


def test_tokenize_options(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ids = list(tiny_tok(TEXT, add_special_tokens=False)["input_ids"])
    req = {"prompt": TEXT, "add_special_tokens": False, "return_token_strs": True}
    body = ok(post(tiny_url, "/tokenize", req))
    assert body["tokens"] == ids and body["count"] == len(ids)
    assert body["token_strs"] == tiny_tok.convert_ids_to_tokens(ids)


def test_tokenize_is_never_truncated(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    text = "word " * 100
    body = ok(post(tiny_url, "/tokenize", {"prompt": text}))
    assert body["count"] == len(tiny_tok(text)["input_ids"]) > TINY_MAX_LEN


def test_tokenize_default_model(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    body = ok(post(default_url, "/tokenize", {"prompt": TEXT}))
    assert body["tokens"] == list(default_tok(TEXT)["input_ids"])
    assert body["max_model_len"] == DEFAULT_MAX_LEN


def test_tokenize_model_names(tiny_url: str) -> None:
    for name in TINY_NAMES:
        ok(post(tiny_url, "/tokenize", {"prompt": "hi", "model": name}))
    resp = post(tiny_url, "/tokenize", {"prompt": "hi", "model": "nope"})
    assert_error(resp, 404, message="The model `nope` does not exist.")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": 5}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "a", "add_special_tokens": "yes"}, "add_special_tokens"),
        ({"prompt": "a", "return_token_strs": 1}, "return_token_strs"),
    ],
)
def test_tokenize_validation(tiny_url: str, body: dict[str, Any], field: str) -> None:
    assert_error(post(tiny_url, "/tokenize", body), 400, contains=field)


def test_tokenize_needs_prompt_or_messages(tiny_url: str) -> None:
    assert_error(post(tiny_url, "/tokenize", {}), 400, contains="prompt")


def test_detokenize_round_trip(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    ids = list(tiny_tok(TEXT)["input_ids"])
    body = ok(post(tiny_url, "/detokenize", {"tokens": ids}))
    assert body == {"prompt": tiny_tok.decode(ids)}
    bare = list(tiny_tok(TEXT, add_special_tokens=False)["input_ids"])
    assert ok(post(tiny_url, "/detokenize", {"tokens": bare}))["prompt"] == tiny_tok.decode(bare)
    assert ok(post(tiny_url, "/detokenize", {"tokens": [], "model": TINY_NAMES[1]})) == {
        "prompt": ""
    }


@pytest.mark.parametrize("which", ["negative", "vocab_size", "huge"])
def test_detokenize_out_of_vocab_is_400(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase, which: str
) -> None:
    bad = {"negative": -1, "vocab_size": len(tiny_tok), "huge": 10**9}[which]
    assert_error(post(tiny_url, "/detokenize", {"tokens": [5, bad]}), 400, contains=str(bad))


@pytest.mark.parametrize(
    "body", [{}, {"tokens": "abc"}, {"tokens": [1, "2"]}, {"tokens": [1.5]}, {"tokens": [True]}]
)
def test_detokenize_validation(tiny_url: str, body: dict[str, Any]) -> None:
    assert_error(post(tiny_url, "/detokenize", body), 400, contains="tokens")


def test_detokenize_unknown_model_is_404(tiny_url: str) -> None:
    assert_error(post(tiny_url, "/detokenize", {"tokens": [5], "model": "x"}), 404)
