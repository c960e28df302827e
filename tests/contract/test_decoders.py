"""Decoder pooling models (Qwen2, Qwen3, Llama, Mistral, Gemma): classify, pooling, embed.

References are transformers on the same weights at float32, one unpadded sequence at a
time; the chat form's reference is the template rendered, then tokenized without
special tokens (the template writes any BOS itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import assert_error, ok, post, vectors
from tests.fixtures.several import one_model

TEXTS = ["the cat sits on the mat", "what is the capital of France?", "hello"]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Is the sky blue? yes or no"},
]
ARCHS = ("qwen2", "qwen3", "llama", "mistral", "gemma")
APEACH = "jason9693/Qwen2.5-1.5B-apeach"  # vLLM's pooling example model


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def ref_logits(path: Path, ids_list: list[list[int]]) -> np.ndarray:
    """transformers' *ForSequenceClassification logits, one sequence at a time."""
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for ids in ids_list:
            rows.append(model(input_ids=torch.tensor([ids])).logits[0].numpy())
    return np.asarray(rows, dtype=np.float64)


def text_ids(path: Path, texts: list[str]) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(path)
    return [tok(t)["input_ids"] for t in texts]


def chat_ids(path: Path, messages: list[dict[str, Any]]) -> list[int]:
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(messages, tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module", params=ARCHS)
def decoder_cls(request: Any, tiny: Callable[..., Path]) -> Iterator[tuple[Path, str]]:
    """(model dir, url) of a tiny two-label *ForSequenceClassification decoder."""
    path = tiny("decoder", request.param, "seq-cls", 2)
    with serve_in_thread(make_context(path)) as url:
        yield path, url


def test_classify_matches_transformers(decoder_cls: tuple[Path, str]) -> None:
    path, url = decoder_cls
    body = ok(post(url, "/classify", {"input": TEXTS}))
    expected = _softmax(ref_logits(path, text_ids(path, TEXTS)))
    probs = vectors(body, key="probs").astype(np.float64)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    for item, row in zip(body["data"], expected, strict=True):
        assert item["num_classes"] == 2
        assert item["label"] == f"LABEL_{int(row.argmax())}"
    raw = ok(post(url, "/classify", {"input": TEXTS, "activation": False}))
    np.testing.assert_allclose(
        vectors(raw, key="probs"), ref_logits(path, text_ids(path, TEXTS)), atol=1e-4
    )


def test_pooling_input_and_messages(decoder_cls: tuple[Path, str]) -> None:
    path, url = decoder_cls
    body = ok(post(url, "/pooling", {"input": TEXTS}))
    expected = _softmax(ref_logits(path, text_ids(path, TEXTS)))
    np.testing.assert_allclose(vectors(body, key="data"), expected, atol=1e-4)
    chat = ok(post(url, "/pooling", {"messages": MESSAGES}))
    ids = chat_ids(path, MESSAGES)
    assert chat["usage"]["prompt_tokens"] == len(ids)
    np.testing.assert_allclose(
        vectors(chat, key="data"), _softmax(ref_logits(path, [ids])), atol=1e-4
    )


def test_chat_has_one_bos(tiny: Callable[..., Path]) -> None:
    """A template that writes the BOS: the rendered prompt is not given a second one."""
    path = tiny("decoder", "llama", "seq-cls", 2)
    ids = chat_ids(path, MESSAGES)
    tok = AutoTokenizer.from_pretrained(path)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


@pytest.fixture(scope="module")
def apeach_url(tiny: Callable[..., Path]) -> Iterator[str]:
    ctx = make_context(tiny("decoder", "qwen2", "seq-cls", 2), served_model_name=(APEACH,))
    with serve_in_thread(ctx) as url:
        yield url


def test_vllm_pooling_example_client(apeach_url: str) -> None:
    """The two requests of vLLM's openai_pooling_client.py, as it sends them."""
    api_url = f"{apeach_url}/pooling"
    headers = {"User-Agent": "Test Client"}
    prompt: dict[str, Any] = {"model": APEACH, "input": "vLLM is great!"}
    response = requests.post(api_url, headers=headers, json=prompt, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["data"]) == 2
    prompt = {
        "model": APEACH,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "vLLM is great!"}]},
        ],
    }
    response = requests.post(api_url, headers=headers, json=prompt, timeout=30)
    assert response.status_code == 200, response.text
    probs = response.json()["data"][0]["data"]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-5


@one_model
def test_pooling_task_field(apeach_url: str) -> None:
    assert ok(post(apeach_url, "/pooling", {"input": "hello", "task": "classify"}))
    resp = post(apeach_url, "/pooling", {"input": "hello", "task": "embed"})
    assert_error(resp, 400, param="task")
    resp = post(apeach_url, "/embeddings", {"input": "hello"})
    assert_error(resp, 400, contains="Embeddings API")


def test_multi_label_and_override_activation(tiny: Callable[..., Path]) -> None:
    path = tiny("decoder", "qwen2", "seq-cls", 3, problem_type="multi_label_classification")
    logits = ref_logits(path, text_ids(path, TEXTS))
    with serve_in_thread(make_context(path)) as url:
        body = ok(post(url, "/classify", {"input": TEXTS}))
        np.testing.assert_allclose(vectors(body, key="probs"), 1 / (1 + np.exp(-logits)), atol=1e-4)
    ctx = make_context(path, override_pooler_config={"activation": False})
    with serve_in_thread(ctx) as url:
        body = ok(post(url, "/pooling", {"input": TEXTS}))
        np.testing.assert_allclose(vectors(body, key="data"), logits, atol=1e-4)


def _last_hidden(path: Path, ids_list: list[list[int]]) -> np.ndarray:
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        rows = [model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1] for ids in ids_list]
    out = torch.stack(rows).numpy().astype(np.float64)
    return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True))


@pytest.mark.parametrize(
    ("head", "overrides"),
    [("base", {"task": "embed"}), ("causal", {"convert": "embed"}), ("causal", {})],
)
def test_decoder_embed_last_token(
    tiny: Callable[..., Path], head: str, overrides: dict[str, Any]
) -> None:
    """Qwen3-Embedding / e5-mistral shape: LAST pooling, normalized."""
    path = tiny("decoder", "qwen3", head)
    expected = _last_hidden(path, text_ids(path, TEXTS))
    with serve_in_thread(make_context(path, **overrides)) as url:
        body = ok(post(url, "/v1/embeddings", {"input": TEXTS}))
        got = vectors(body)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _hidden_rows(path: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(last hidden states, score head on every token) from transformers."""
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state
        return np.asarray(hidden[0].numpy(), np.float64), np.asarray(
            model.score(hidden)[0].numpy(), np.float64
        )


def test_pooling_per_token_tasks(apeach_url: str, tiny: Callable[..., Path]) -> None:
    """/pooling ``task``: token_embed (normalized hidden states), token_classify (head)."""
    path = tiny("decoder", "qwen2", "seq-cls", 2)
    ids = text_ids(path, TEXTS[:2])
    emb = ok(post(apeach_url, "/pooling", {"input": TEXTS[:2], "task": "token_embed"}))
    raw = ok(
        post(
            apeach_url, "/pooling", {"input": TEXTS[:2], "task": "token_embed", "normalize": False}
        )
    )
    cls = ok(post(apeach_url, "/pooling", {"input": TEXTS[:2], "task": "token_classify"}))
    for i, seq in enumerate(ids):
        hidden, logits = _hidden_rows(path, seq)
        assert emb["usage"]["prompt_tokens"] == sum(len(x) for x in ids)
        got = np.asarray(emb["data"][i]["data"])
        np.testing.assert_allclose(
            got, hidden / np.linalg.norm(hidden, axis=1, keepdims=True), atol=1e-4
        )
        np.testing.assert_allclose(np.asarray(raw["data"][i]["data"]), hidden, atol=1e-4)
        np.testing.assert_allclose(np.asarray(cls["data"][i]["data"]), _softmax(logits), atol=1e-4)
    bad = post(apeach_url, "/pooling", {"input": "x", "task": "token_embed", "activation": True})
    assert_error(bad, 400, param="activation")
    assert_error(post(apeach_url, "/pooling", {"input": "x", "task": "reward"}), 400, param="task")


def test_embedding_model_token_embed(tiny: Callable[..., Path]) -> None:
    """token_embed on an embedding model; token_classify there is a 400."""
    path = tiny("decoder", "qwen3", "base")
    ids = text_ids(path, ["hello world"])[0]
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    with serve_in_thread(make_context(path, task="embed")) as url:
        body = ok(post(url, "/pooling", {"input": "hello world", "task": "token_embed"}))
        bad = post(url, "/pooling", {"input": "x", "task": "token_classify"})
        assert_error(bad, 400, contains="token_embed", param="task")
    expected = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(body["data"][0]["data"]), expected, atol=1e-4)
