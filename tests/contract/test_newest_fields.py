"""Newest vLLM's request fields: truncation_side, score's queries/items, per-text limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.contract.util import CROSS_NAME, assert_error, post

TEXT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def _vector(url: str, body: dict[str, Any]) -> np.ndarray:
    resp = post(url, "/v1/embeddings", body)
    assert resp.status_code == 200, resp.text
    return np.array(resp.json()["data"][0]["embedding"])


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_side_keeps_special_tokens(
    default_url: str, default_tok: PreTrainedTokenizerBase, side: str
) -> None:
    k = 6
    got = _vector(
        default_url, {"input": TEXT, "truncate_prompt_tokens": k, "truncation_side": side}
    )
    body = default_tok(TEXT, add_special_tokens=False)["input_ids"]
    kept = body[-(k - 2) :] if side == "left" else body[: k - 2]
    ids = [default_tok.cls_token_id, *kept, default_tok.sep_token_id]
    assert np.allclose(got, _vector(default_url, {"input": ids}), atol=1e-6)


def test_no_truncation_side_is_right_for_text(default_url: str) -> None:
    plain = _vector(default_url, {"input": TEXT, "truncate_prompt_tokens": 6})
    right = _vector(
        default_url, {"input": TEXT, "truncate_prompt_tokens": 6, "truncation_side": "right"}
    )
    assert np.allclose(plain, right, atol=1e-6)


def test_token_ids_follow_truncation_side(default_url: str) -> None:
    ids = [101, 2028, 2048, 2093, 2176, 2274, 102]
    for side, kept in ((None, ids[-4:]), ("left", ids[-4:]), ("right", ids[:4])):
        body: dict[str, Any] = {"input": ids, "truncate_prompt_tokens": 4}
        if side is not None:
            body["truncation_side"] = side
        assert np.allclose(_vector(default_url, body), _vector(default_url, {"input": kept}))


def test_bad_truncation_side_is_400(default_url: str) -> None:
    resp = post(default_url, "/v1/embeddings", {"input": "x", "truncation_side": "middle"})
    assert_error(resp, 400, contains="truncation_side")


def test_truncation_side_on_pairs(cross_url: str) -> None:
    query, doc = "what is it", TEXT
    for side in ("left", "right"):
        resp = post(
            cross_url,
            "/score",
            {"text_1": query, "text_2": doc, "truncate_prompt_tokens": 10, "truncation_side": side},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] == 10
    left, right = (
        post(
            cross_url,
            "/score",
            {"text_1": query, "text_2": doc, "truncate_prompt_tokens": 10, "truncation_side": s},
        ).json()["data"][0]["score"]
        for s in ("left", "right")
    )
    assert left != right


def test_queries_items_equal_text_1_text_2(default_url: str, cross_url: str) -> None:
    for url in (default_url, cross_url):
        a = post(url, "/score", {"text_1": "q", "text_2": ["a", "b"]}).json()
        b = post(url, "/score", {"queries": "q", "items": ["a", "b"]}).json()
        c = post(url, "/score", {"queries": "q", "documents": ["a", "b"]}).json()
        assert [d["score"] for d in a["data"]] == [d["score"] for d in b["data"]]
        assert [d["score"] for d in a["data"]] == [d["score"] for d in c["data"]]
    resp = post(default_url, "/score", {"queries": "q", "items": ["a"], "documents": ["b"]})
    assert_error(resp, 400, contains="give only one of")


def test_max_tokens_per_doc_and_query(cross_url: str, cross_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(cross_dir)

    def first(text: str, n: int) -> str:  # the text up to the end of its n-th token
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return text[: offsets["offset_mapping"][n - 1][1]]

    query = "where are the twelve numbers"
    cut = post(
        cross_url,
        "/rerank",
        {"model": CROSS_NAME, "query": query, "documents": [TEXT], "max_tokens_per_doc": 3,
         "max_tokens_per_query": 2},
    ).json()  # fmt: skip
    short = post(
        cross_url,
        "/rerank",
        {"model": CROSS_NAME, "query": first(query, 2), "documents": [first(TEXT, 3)]},
    ).json()
    assert cut["results"][0]["relevance_score"] == pytest.approx(
        short["results"][0]["relevance_score"], abs=1e-6
    )
    assert cut["usage"]["prompt_tokens"] == short["usage"]["prompt_tokens"] == 3 + 2 + 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_tokens_per_doc", -1, "max_tokens_per_doc must be a non-negative integer"),
        ("max_tokens_per_query", 100000, "must be less than max_model_len"),
        ("instruction", "Judge relevance", "score chat template"),
    ],
)
def test_scoring_field_errors(cross_url: str, field: str, value: Any, message: str) -> None:
    body = {"text_1": "q", "text_2": "d", field: value}
    assert_error(post(cross_url, "/score", body), 400, contains=message)


@pytest.mark.parametrize(
    ("field", "value"), [("padding", "max_length"), ("late_chunking_params", {"chunk_size": 4})]
)
def test_refused_newest_fields_are_400(default_url: str, field: str, value: Any) -> None:
    for path in ("/v1/embeddings", "/pooling"):
        resp = post(default_url, path, {"input": "hello", field: value})
        assert_error(resp, 400, contains=field, param=field)
    ok = post(default_url, "/v1/embeddings", {"input": "hello", "padding": "do_not_pad"})
    assert ok.status_code == 200


def test_an_explicit_no_truncation_beats_auto_truncate() -> None:
    from tests.conftest import make_context, serve_in_thread

    long = " ".join(["word"] * 400)
    with serve_in_thread(make_context(None, auto_truncate=True)) as url:
        assert post(url, "/v1/embeddings", {"input": long}).status_code == 200
        cohere = post(url, "/v2/embed", {"texts": [long], "truncate": "NONE"})
        assert_error(cohere, 400, contains="maximum context length")
        assert post(url, "/v2/embed", {"texts": [long]}).status_code == 200  # END
        tei = post(url, "/embed", {"inputs": long, "truncate": False})
        assert tei.status_code == 422 and tei.json()["error_type"] == "Validation"
        assert post(url, "/embed", {"inputs": long}).status_code == 200
