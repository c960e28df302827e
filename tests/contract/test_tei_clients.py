"""Hugging Face text-embeddings-inference (TEI) routes, part 2: /predict, TEI's /rerank and
/tokenize bodies beside the Jina and vLLM ones, /decode, /info and POST / (docs/tei.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests
from transformers import PreTrainedTokenizerBase

from tests.contract.test_tei import DOCS, QUERY, TEXTS
from tests.contract.util import (
    CROSS_NAME,
    DEFAULT_MAX_LEN,
    DEFAULT_NAME,
    assert_error,
    assert_tei_error,
    ok,
    post,
    tei_ok,
)

# -- /predict -------------------------------------------------------------------------


def _classify(url: str, texts: list[str], **fields: Any) -> np.ndarray:
    body = ok(post(url, "/classify", {"input": texts, **fields}))
    return np.asarray([d["probs"] for d in body["data"]], dtype=np.float32)


def test_predict_equals_classify(classifier_url: str) -> None:
    probs = _classify(classifier_url, TEXTS)
    resp = post(classifier_url, "/predict", {"inputs": TEXTS[0]})
    single = tei_ok(resp)
    assert resp.text.startswith('[{"score":')  # TEI's field order: score, then label
    assert [set(p) for p in single] == [{"score", "label"}] * 2
    assert [p["label"] for p in single] == [
        ["LABEL_0", "LABEL_1"][j] for j in np.argsort(-probs[0], kind="stable")
    ]
    scores = [p["score"] for p in single]
    assert scores == sorted(scores, reverse=True)
    labels = {p["label"]: p["score"] for p in single}
    np.testing.assert_allclose([labels["LABEL_0"], labels["LABEL_1"]], probs[0], atol=1e-6)
    assert ok(post(classifier_url, "/predict", {"inputs": [TEXTS[0]]})) == single
    batch = tei_ok(post(classifier_url, "/predict", {"inputs": [[t] for t in TEXTS]}))
    assert len(batch) == len(TEXTS) and batch[0] == single
    for preds, row in zip(batch, probs, strict=True):
        got = {p["label"]: p["score"] for p in preds}
        np.testing.assert_allclose([got["LABEL_0"], got["LABEL_1"]], row, atol=1e-6)
    raw = tei_ok(post(classifier_url, "/predict", {"inputs": TEXTS[0], "raw_scores": True}))
    logits = _classify(classifier_url, TEXTS[:1], activation=False)[0]
    got = {p["label"]: p["score"] for p in raw}
    np.testing.assert_allclose([got["LABEL_0"], got["LABEL_1"]], logits, atol=1e-5)


def test_predict_pairs_on_a_cross_encoder(cross_url: str, cross_model: Any) -> None:
    """A text pair is one input (the reranker kind): sigmoid of the pair's logit."""
    expected = cross_model.predict([(QUERY, d) for d in DOCS])
    one = tei_ok(post(cross_url, "/predict", {"inputs": [QUERY, DOCS[0]]}))
    assert len(one) == 1 and one[0]["label"] == "LABEL_0"
    assert abs(one[0]["score"] - expected[0]) < 1e-4
    batch = tei_ok(post(cross_url, "/predict", {"inputs": [[QUERY, d] for d in DOCS]}))
    np.testing.assert_allclose([b[0]["score"] for b in batch], expected, atol=1e-4)


@pytest.mark.parametrize(
    ("inputs", "status", "error_type"),
    [
        ([], 422, "Validation"),
        (["a", "b", "c"], 422, "Validation"),
        ([["a", "b", "c"]], 422, "Validation"),
        ([["a"], "b"], 422, "Validation"),
        ("", 400, "Empty"),
        (["", ""], 400, "Empty"),
    ],
)
def test_predict_bad_inputs(classifier_url: str, inputs: Any, status: int, error_type: str) -> None:
    resp = post(classifier_url, "/predict", {"inputs": inputs})
    assert_tei_error(resp, status, error_type)


# -- TEI's /rerank beside the Jina/Cohere one -----------------------------------------


def test_tei_rerank_equals_jina_rerank(cross_url: str) -> None:
    jina = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": DOCS}))["results"]
    resp = post(cross_url, "/rerank", {"query": QUERY, "texts": DOCS})
    tei = tei_ok(resp)
    assert resp.text.startswith('[{"index":')
    assert [r["index"] for r in tei] == [r["index"] for r in jina]
    assert all(set(r) == {"index", "score"} for r in tei)
    np.testing.assert_array_equal(
        np.float32([r["score"] for r in tei]), np.float32([r["relevance_score"] for r in jina])
    )
    texts = tei_ok(post(cross_url, "/rerank", {"query": QUERY, "texts": DOCS, "return_text": True}))
    assert all(list(r) == ["index", "text", "score"] for r in texts)  # TEI's field order
    assert [r["text"] for r in texts] == [DOCS[r["index"]] for r in tei]
    raw = tei_ok(post(cross_url, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}))
    logits = ok(post(cross_url, "/rerank", {"query": QUERY, "documents": DOCS,
                                            "activation": False}))["results"]  # fmt: skip
    np.testing.assert_allclose(
        [r["score"] for r in raw], [r["relevance_score"] for r in logits], atol=1e-6
    )


def test_tei_rerank_errors(cross_url: str, cross_tok: PreTrainedTokenizerBase) -> None:
    url = cross_url
    body = {"query": QUERY, "texts": []}
    assert_tei_error(post(url, "/rerank", body), 400, "Empty", "`texts` cannot be empty")
    assert_tei_error(post(url, "/rerank", {"query": QUERY, "texts": "a"}), 422, "Validation")
    long_doc = "the quick brown fox " * 40
    n = len(cross_tok(QUERY, long_doc)["input_ids"])
    message = f"Input validation error: `inputs` must have less than 128 tokens. Given: {n}"
    resp = post(url, "/rerank", {"query": QUERY, "texts": ["short", long_doc]})
    assert_tei_error(resp, 422, "Validation", message)
    cut = tei_ok(post(url, "/rerank", {"query": QUERY, "texts": ["short", long_doc],
                                       "truncate": True}))  # fmt: skip
    assert sorted(r["index"] for r in cut) == [0, 1]
    # Left cuts the start of the pair, as the Jina request's truncation_side does
    for side in ("Right", "Left"):
        tei = tei_ok(
            post(
                url,
                "/rerank",
                {
                    "query": QUERY,
                    "texts": ["short", long_doc],
                    "truncate": True,
                    "truncation_direction": side,
                },
            )
        )
        jina = ok(post(url, "/rerank", {"query": QUERY, "documents": ["short", long_doc],
                                        "truncate_prompt_tokens": -1,
                                        "truncation_side": side.lower()}))["results"]  # fmt: skip
        got = {r["index"]: r["score"] for r in tei}
        np.testing.assert_allclose(
            [got[r["index"]] for r in jina], [r["relevance_score"] for r in jina], atol=1e-6
        )
        if side == "Right":
            right = got
    assert abs(got[1] - right[1]) > 1e-6  # the two sides kept different tokens
    # the Jina shape keeps its own errors on the same path
    assert_error(post(url, "/rerank", {"query": QUERY}), 400, param="documents")


def test_tei_rerank_on_an_embedding_model_is_cosine(default_url: str) -> None:
    jina = ok(post(default_url, "/rerank", {"query": QUERY, "documents": DOCS}))["results"]
    tei = tei_ok(post(default_url, "/rerank", {"query": QUERY, "texts": DOCS}))
    assert [r["index"] for r in tei] == [r["index"] for r in jina]
    np.testing.assert_allclose(
        [r["score"] for r in tei], [r["relevance_score"] for r in jina], atol=1e-6
    )


# -- TEI's /tokenize beside vLLM's; /decode ------------------------------------------


def test_tei_tokenize_offsets(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    text = "Hello world, this is a small test sentence."
    resp = post(default_url, "/tokenize", {"inputs": text})
    body = tei_ok(resp)
    assert resp.text.startswith('[[{"id":')
    enc = default_tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    tokens = body[0]
    assert len(body) == 1
    assert [t["id"] for t in tokens] == enc["input_ids"]
    for tok, (start, stop), special, piece in zip(
        tokens,
        enc["offset_mapping"],
        enc["special_tokens_mask"],
        default_tok.convert_ids_to_tokens(enc["input_ids"]),
        strict=True,
    ):
        assert list(tok) == ["id", "text", "special", "start", "stop"]  # TEI's field order
        assert tok["special"] == bool(special)
        if special:
            assert (tok["text"], tok["start"], tok["stop"]) == (piece, None, None)
        else:
            assert (tok["start"], tok["stop"]) == (start, stop)
            assert tok["text"] == text[start:stop]
    plain = tei_ok(post(default_url, "/tokenize",
                        {"inputs": [text, "dogs"], "add_special_tokens": False}))  # fmt: skip
    assert [t["id"] for t in plain[0]] == default_tok(text, add_special_tokens=False)["input_ids"]
    assert len(plain) == 2 and not any(t["special"] for t in plain[0] + plain[1])


def test_tei_tokenize_byte_offsets(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    """TEI's spans are UTF-8 byte offsets, not character indexes."""
    text = "café déjà vu"
    tokens = tei_ok(post(default_url, "/tokenize", {"inputs": text}))[0]
    raw = text.encode()
    spans = [t for t in tokens if not t["special"]]
    assert spans[-1]["stop"] == len(raw) > len(text)
    for tok in spans:
        assert raw[tok["start"] : tok["stop"]].decode() == tok["text"]


def test_tei_tokenize_errors_and_vllm_tokenize(default_url: str) -> None:
    assert_tei_error(post(default_url, "/tokenize", {"inputs": []}), 400, "Empty",
                     "`inputs` cannot be empty")  # fmt: skip
    assert_tei_error(post(default_url, "/tokenize", {"inputs": 3}), 422, "Validation")
    too_long = "a" * (DEFAULT_MAX_LEN * 250 + 1)
    assert_tei_error(
        post(default_url, "/tokenize", {"inputs": too_long}),
        422,
        "Validation",
        f"Input validation error: `inputs` must have less than {DEFAULT_MAX_LEN * 250} "
        f"characters. Given: {len(too_long)}",
    )
    vllm = ok(post(default_url, "/tokenize", {"prompt": "hi"}))
    assert set(vllm) == {"count", "max_model_len", "tokens", "token_strs"}


def test_decode(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    ids = list(default_tok("Hello world")["input_ids"])
    assert tei_ok(post(default_url, "/decode", {"ids": ids})) == ["hello world"]
    with_special = tei_ok(post(default_url, "/decode", {"ids": ids, "skip_special_tokens": False}))
    assert with_special == ["[CLS] hello world [SEP]"]
    batch = tei_ok(post(default_url, "/decode", {"ids": [ids, ids[1:2]]}))
    assert batch == ["hello world", "hello"]
    assert_tei_error(post(default_url, "/decode", {"ids": []}), 400, "Empty",
                     "Input validation error: `input_ids` cannot be empty")  # fmt: skip
    assert_tei_error(post(default_url, "/decode", {"ids": [10**9]}), 422, "Validation")


# -- /info, POST /, huggingface_hub ---------------------------------------------------


def test_info(default_url: str, classifier_url: str, cross_url: str) -> None:
    info = tei_ok(requests.get(default_url + "/info", timeout=30))
    assert list(info) == [
        "model_id", "model_sha", "model_dtype", "served_model_name", "model_type",
        "max_concurrent_requests", "max_input_length", "max_batch_tokens",
        "max_batch_requests", "max_client_batch_size", "auto_truncate",
        "tokenization_workers", "version", "sha", "docker_label",
    ]  # fmt: skip
    assert info["model_id"] == info["served_model_name"] == DEFAULT_NAME
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["model_dtype"] == "float32"
    assert info["max_input_length"] == DEFAULT_MAX_LEN
    assert info["max_client_batch_size"] == 4096 and info["auto_truncate"] is False
    classifier = tei_ok(requests.get(classifier_url + "/info", timeout=30))["model_type"]
    assert classifier == {
        "classifier": {
            "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
            "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        }
    }
    cross = tei_ok(requests.get(cross_url + "/info", timeout=30))
    assert cross["served_model_name"] == CROSS_NAME
    assert cross["model_type"] == {
        "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    }


def test_root_routes_by_model_kind(default_url: str, classifier_url: str, cross_url: str) -> None:
    assert requests.get(default_url + "/", timeout=30).status_code == 200  # TEI's health
    assert tei_ok(post(default_url, "/", {"inputs": TEXTS})) == tei_ok(
        post(default_url, "/embed", {"inputs": TEXTS})
    )
    sim = {"inputs": {"source_sentence": QUERY, "sentences": DOCS}}
    assert tei_ok(post(default_url, "/", sim)) == tei_ok(post(default_url, "/similarity", sim))
    assert tei_ok(post(classifier_url, "/", {"inputs": "a"})) == tei_ok(
        post(classifier_url, "/predict", {"inputs": "a"})
    )
    rr = {"query": QUERY, "texts": DOCS}
    assert tei_ok(post(cross_url, "/", rr)) == tei_ok(post(cross_url, "/rerank", rr))
    assert_tei_error(post(default_url, "/", {"inputs": 5}), 422, "Validation")
