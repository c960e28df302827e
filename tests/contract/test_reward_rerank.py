"""--task reward (ALL and STEP pooling) and the LLM-as-reranker --hf-overrides recipes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import assert_error, ok, post
from tests.fixtures.several import one_model

TEXTS = ["the cat sits on the mat. the dog runs.", "hello world. yes."]


def _token_rows(path: Path, ids: list[int]) -> np.ndarray:
    """The *ForSequenceClassification head applied to every token's hidden state."""
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state
        return np.asarray(model.score(hidden)[0].numpy(), dtype=np.float64)


def _lm_logits(path: Path, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        return np.asarray(model(input_ids=torch.tensor([ids])).logits[0].numpy(), np.float64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def _pooled(body: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(d["data"], dtype=np.float64) for d in body["data"]]


@one_model
def test_reward_per_token_rows(tiny: Callable[..., Path]) -> None:
    path = tiny("decoder", "qwen2", "seq-cls", 2)
    tok = AutoTokenizer.from_pretrained(path)
    with serve_in_thread(make_context(path, task="reward")) as url:
        body = ok(post(url, "/pooling", {"input": TEXTS}))
        soft = ok(post(url, "/pooling", {"input": TEXTS, "softmax": True}))
        assert_error(post(url, "/classify", {"input": "x"}), 400, contains="Classification API")
        assert_error(post(url, "/pooling", {"input": "x", "normalize": True}), 400)
        assert_error(post(url, "/pooling", {"input": "x", "task": "embed"}), 400, param="task")
        assert ok(post(url, "/pooling", {"input": "x", "task": "token_classify"}))
    for text, rows, srows in zip(TEXTS, _pooled(body), _pooled(soft), strict=True):
        expected = _token_rows(path, tok(text)["input_ids"])
        assert rows.shape == expected.shape  # [num_tokens][num_labels]
        np.testing.assert_allclose(rows, expected, atol=1e-4)
        np.testing.assert_allclose(srows, _softmax(expected), atol=1e-4)


def test_reward_step_pooling(tiny: Callable[..., Path]) -> None:
    """STEP keeps only the rows at the step tag's positions."""
    path = tiny("decoder", "qwen2", "seq-cls", 2)
    tok = AutoTokenizer.from_pretrained(path)
    tag = tok.convert_tokens_to_ids(".")
    override = {"pooling_type": "STEP", "step_tag_id": tag, "softmax": True}
    with serve_in_thread(make_context(path, task="reward", override_pooler_config=override)) as url:
        body = ok(post(url, "/pooling", {"input": TEXTS}))
    for text, rows in zip(TEXTS, _pooled(body), strict=True):
        ids = tok(text)["input_ids"]
        at = [i for i, t in enumerate(ids) if t == tag]
        assert len(at) == 2
        np.testing.assert_allclose(rows, _softmax(_token_rows(path, ids)[at]), atol=1e-4)


def test_reward_step_returned_token_ids(tiny: Callable[..., Path]) -> None:
    """math-shepherd style: a *ForCausalLM, the LM logits of two tokens at each step tag."""
    path = tiny("decoder", "llama", "causal")
    tok = AutoTokenizer.from_pretrained(path)
    tag = tok.convert_tokens_to_ids(".")
    pick = [tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")]
    override = {"pooling_type": "STEP", "step_tag_id": tag, "returned_token_ids": pick}
    ctx = make_context(path, convert="reward", override_pooler_config=override)
    with serve_in_thread(ctx) as url:
        body = ok(post(url, "/pooling", {"input": TEXTS[0]}))
    ids = tok(TEXTS[0])["input_ids"]
    at = [i for i, t in enumerate(ids) if t == tag]
    expected = _lm_logits(path, ids)[at][:, pick]
    np.testing.assert_allclose(_pooled(body)[0], expected, atol=1e-4)


def test_convert_reward_hidden_states(tiny: Callable[..., Path]) -> None:
    """--convert reward on a *ForCausalLM: ALL, no activation -> per-token hidden states."""
    path = tiny("decoder", "qwen3", "causal")
    tok = AutoTokenizer.from_pretrained(path)
    with serve_in_thread(make_context(path, convert="reward")) as url:
        rows = _pooled(ok(post(url, "/pooling", {"input": "hello world"})))[0]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        ids = torch.tensor([tok("hello world")["input_ids"]])
        expected = model.model(input_ids=ids).last_hidden_state[0].numpy()
    np.testing.assert_allclose(rows, expected, atol=1e-4)


QUERY = "what is the capital of France?"
DOCS = ["Paris is the capital of France.", "the cat sits on the mat", "hello world"]
RECIPES = {
    # Qwen3-Reranker, as vLLM's docs serve it.
    "qwen3": {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True,
        "method": "from_2_way_softmax",
    },
    # bge-reranker-v2-gemma: the "yes" row of the LM head, kept as is.
    "gemma": {
        "architectures": ["GemmaForSequenceClassification"],
        "classifier_from_token": ["yes"],
        "method": "no_post_processing",
    },
}


def _reranker_scores(path: Path, arch: str) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(path)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    out = []
    for doc in DOCS:
        last = _lm_logits(path, tok(QUERY, doc)["input_ids"])[-1]
        logit = last[yes] - last[no] if arch == "qwen3" else last[yes]
        out.append(1 / (1 + np.exp(-logit)))
    return np.asarray(out)


@pytest.mark.parametrize("arch", sorted(RECIPES))
def test_llm_reranker_recipes(tiny: Callable[..., Path], arch: str) -> None:
    path = tiny("decoder", arch, "causal")
    expected = _reranker_scores(path, arch)
    ctx = make_context(path, hf_overrides=RECIPES[arch])
    assert ctx.info.task == "classify" and ctx.info.num_labels == 1
    with serve_in_thread(ctx) as url:
        score = ok(post(url, "/score", {"text_1": QUERY, "text_2": DOCS}))
        rerank = ok(post(url, "/rerank", {"query": QUERY, "documents": DOCS}))
    got = np.asarray([d["score"] for d in score["data"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    by_index = {r["index"]: r["relevance_score"] for r in rerank["results"]}
    np.testing.assert_allclose([by_index[i] for i in range(len(DOCS))], expected, atol=1e-4)
