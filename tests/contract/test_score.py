"""POST /score and /v1/score: cross-encoder and embedding-model scoring, pairing, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests
import torch
from transformers import PreTrainedTokenizerBase

from poolserve.serving.context import ServingContext
from tests.contract.util import (
    CROSS_MAX_LEN,
    CROSS_NAME,
    DEFAULT_MAX_LEN,
    DEFAULT_NAME,
    TIMEOUT,
    assert_error,
    context_message,
    expected_usage,
    ok,
    post,
    scores,
)
from tests.fixtures import cluster
from tests.fixtures.several import one_model

Q = "What is the capital of France?"
DOCS = [
    "The capital of Brazil is Brasilia.",
    "The capital of France is Paris.",
    "A man is eating food.",
]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)  # > 128 tokens


def _predict(model: Any, pairs: list[tuple[str, str]], **kwargs: Any) -> np.ndarray:
    return np.asarray(model.predict(pairs, batch_size=8, **kwargs), dtype=np.float64)


def _pair_tokens(tok: PreTrainedTokenizerBase, pairs: list[tuple[str, str]]) -> int:
    return sum(len(tok(a, b)["input_ids"]) for a, b in pairs)


# -- vLLM's example client, unmodified payloads ---------------------------------------


def test_vllm_example_client_payloads(cross_url: str, cross_model: Any) -> None:
    """examples/online_serving/openai_cross_encoder_score.py: str/str, str/list, list/list."""
    api_url = f"{cross_url}/score"
    headers = {"User-Agent": "Test Client"}
    model_name = CROSS_NAME

    text_1 = "What is the capital of France?"
    text_2 = "The capital of France is Paris."
    prompt = {"model": model_name, "text_1": text_1, "text_2": text_2}
    response = requests.post(api_url, headers=headers, json=prompt, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    got = scores(response.json())
    np.testing.assert_allclose(got, _predict(cross_model, [(text_1, text_2)]), atol=1e-4)

    text_1 = "What is the capital of France?"
    text_2 = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    prompt = {"model": model_name, "text_1": text_1, "text_2": text_2}
    response = requests.post(api_url, headers=headers, json=prompt, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    got = scores(response.json())
    assert len(got) == 2
    expected = _predict(cross_model, [(text_1, t) for t in text_2])
    np.testing.assert_allclose(got, expected, atol=1e-4)

    text_1 = ["What is the capital of Brazil?", "What is the capital of France?"]
    text_2 = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    prompt = {"model": model_name, "text_1": text_1, "text_2": text_2}
    response = requests.post(api_url, headers=headers, json=prompt, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    got = scores(response.json())
    assert len(got) == 2
    np.testing.assert_allclose(
        got, _predict(cross_model, list(zip(text_1, text_2, strict=True))), atol=1e-4
    )


def test_response_shape_and_usage(cross_url: str, cross_tok: PreTrainedTokenizerBase) -> None:
    resp = post(cross_url, "/score", {"text_1": Q, "text_2": DOCS}, headers={"X-Request-Id": "r1"})
    body = ok(resp)
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"] == "score-r1"
    assert body["object"] == "list"
    assert body["model"] == CROSS_NAME
    assert isinstance(body["created"], int)
    assert len(scores(body)) == len(DOCS)
    assert body["usage"] == expected_usage(_pair_tokens(cross_tok, [(Q, d) for d in DOCS]))


def test_v1_alias_and_newer_field_names(cross_url: str) -> None:
    base = scores(ok(post(cross_url, "/score", {"text_1": Q, "text_2": DOCS})))
    for path, body in [
        ("/v1/score", {"text_1": Q, "text_2": DOCS}),
        ("/score", {"queries": Q, "documents": DOCS}),
        ("/score", {"data_1": [Q], "data_2": DOCS}),
        ("/score", {"text_1": Q, "documents": DOCS}),
    ]:
        np.testing.assert_allclose(scores(ok(post(cross_url, path, body))), base, atol=1e-6)


def test_n_to_n_is_zipped(cross_url: str, cross_model: Any) -> None:
    firsts = [Q, "a woman is playing the violin", "the cat sits on the mat"]
    got = scores(ok(post(cross_url, "/score", {"text_1": firsts, "text_2": DOCS})))
    np.testing.assert_allclose(
        got, _predict(cross_model, list(zip(firsts, DOCS, strict=True))), atol=1e-4
    )


def test_activation_switches(cross_url: str, cross_model: Any) -> None:
    pairs = [(Q, d) for d in DOCS]
    raw = _predict(cross_model, pairs, activation_fn=torch.nn.Identity())
    on = _predict(cross_model, pairs)
    for switch in ({"activation": False}, {"use_activation": False}):
        got = scores(ok(post(cross_url, "/score", {"text_1": Q, "text_2": DOCS, **switch})))
        np.testing.assert_allclose(got, raw, atol=1e-4)
    for switch in ({"activation": True}, {"use_activation": True}, {}):
        got = scores(ok(post(cross_url, "/score", {"text_1": Q, "text_2": DOCS, **switch})))
        np.testing.assert_allclose(got, on, atol=1e-4)
        assert ((got > 0) & (got < 1)).all()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"normalize": True}, "normalize"),
        ({"softmax": False}, "softmax"),
        ({"activation": True, "use_activation": False}, "activation"),
        ({"activation": "no"}, "activation"),
    ],
)
def test_bad_switches_are_400(cross_url: str, fields: dict[str, Any], param: str) -> None:
    resp = post(cross_url, "/score", {"text_1": Q, "text_2": "x", **fields})
    assert_error(resp, 400, param=param, contains=param)


def test_truncation_is_longest_first(
    cross_url: str, cross_dir: Any, cross_tok: PreTrainedTokenizerBase
) -> None:
    from sentence_transformers import CrossEncoder

    k = 24
    pairs = [(Q, LONG), (LONG, "short text"), (LONG, LONG)]
    body = ok(
        post(
            cross_url,
            "/score",
            {
                "text_1": [p[0] for p in pairs],
                "text_2": [p[1] for p in pairs],
                "truncate_prompt_tokens": k,
            },
        )
    )
    # sentence-transformers truncates pairs longest-first at its max length.
    reference = CrossEncoder(str(cross_dir), device="cpu", max_length=k)
    np.testing.assert_allclose(scores(body), _predict(reference, pairs), atol=1e-4)
    assert body["usage"]["prompt_tokens"] == k * len(pairs)
    # -1 means the max length.
    body = ok(post(cross_url, "/score", {"text_1": LONG, "text_2": LONG,
                                         "truncate_prompt_tokens": -1}))  # fmt: skip
    assert body["usage"]["prompt_tokens"] == CROSS_MAX_LEN


def test_over_length_pair_is_400(cross_url: str, cross_tok: PreTrainedTokenizerBase) -> None:
    n = len(cross_tok(Q, LONG)["input_ids"])
    assert n > CROSS_MAX_LEN
    resp = post(cross_url, "/score", {"text_1": Q, "text_2": ["short", LONG]})
    assert_error(resp, 400, message=context_message(CROSS_MAX_LEN, n, "score"))


@pytest.mark.parametrize("k", [2, CROSS_MAX_LEN + 1, 0, -2])
def test_bad_truncation_is_400(cross_url: str, k: int) -> None:
    resp = post(cross_url, "/score", {"text_1": Q, "text_2": LONG, "truncate_prompt_tokens": k})
    assert_error(resp, 400, contains="truncate_prompt_tokens")


@pytest.mark.parametrize(
    ("text_1", "text_2", "message", "param"),
    [
        (["a", "b"], ["x", "y", "z"], "Input lengths must be either 1:1, 1:N or N:N", "text_1"),
        (["a", "b"], [], "Input lengths must be either 1:1, 1:N or N:N", "text_1"),
        ([], ["x"], "At least one text element must be given", "text_1"),
        ([], [], "At least one text element must be given", "text_1"),
        ("a", [], "At least one text_pair element must be given", "text_2"),
        (["a"], [], "At least one text_pair element must be given", "text_2"),
    ],
)
def test_pairing_errors(
    cross_url: str, default_url: str, text_1: Any, text_2: Any, message: str, param: str
) -> None:
    for url in (cross_url, default_url):  # the same rules for both kinds of model
        resp = post(url, "/score", {"text_1": text_1, "text_2": text_2})
        assert_error(resp, 400, message=message, param=param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text_2": "x"}, "text_1"),
        ({"text_1": "x"}, "text_2"),
        ({"text_1": "x", "queries": "y", "text_2": "z"}, "queries"),
        ({"text_1": "x", "text_2": "z", "data_2": "w"}, "data_2"),
        ({"text_1": 3, "text_2": "z"}, "text_1"),
        ({"text_1": "x", "text_2": ["z", None]}, "text_2"),
    ],
)
def test_missing_or_bad_fields_are_400(cross_url: str, body: dict[str, Any], param: str) -> None:
    assert_error(post(cross_url, "/score", body), 400, param=param)


def test_unknown_model_is_404(cross_url: str) -> None:
    resp = post(cross_url, "/score", {"model": "nope", "text_1": "a", "text_2": "b"})
    assert_error(resp, 404, message="The model `nope` does not exist.")


@one_model
def test_cross_encoder_has_no_embeddings(cross_url: str) -> None:
    resp = post(cross_url, "/v1/embeddings", {"input": "a"})
    assert_error(resp, 400, message="The model does not support Embeddings API")


@one_model
def test_two_label_model_has_no_score_api(classifier_url: str) -> None:
    resp = post(classifier_url, "/score", {"text_1": "a", "text_2": "b"})
    assert_error(resp, 400, message="The model does not support Score API")


# -- embedding models: cosine similarity ----------------------------------------------


@pytest.fixture(scope="module")
def default_st() -> Any:
    from sentence_transformers import SentenceTransformer

    from poolserve.models.resolve import resolve_model_dir

    return SentenceTransformer(str(resolve_model_dir(None)), device="cpu")


def _cos_sim(model: Any, a: list[str], b: list[str]) -> np.ndarray:
    from sentence_transformers import util

    ea = model.encode(a, convert_to_tensor=True)
    eb = model.encode(b, convert_to_tensor=True)
    return np.asarray(util.cos_sim(ea, eb).diagonal().cpu().numpy(), dtype=np.float64)


@pytest.mark.parametrize(
    ("text_1", "text_2"),
    [(Q, DOCS[1]), (Q, DOCS), ([Q, "How do I bake bread?", "a dog"], DOCS)],
    ids=["1:1", "1:N", "N:N"],
)
def test_embedding_model_scores_by_cosine(
    default_url: str,
    default_st: Any,
    default_tok: PreTrainedTokenizerBase,
    text_1: Any,
    text_2: Any,
) -> None:
    body = ok(post(default_url, "/score", {"text_1": text_1, "text_2": text_2}))
    assert body["model"] == DEFAULT_NAME
    t1 = [text_1] if isinstance(text_1, str) else text_1
    t2 = [text_2] if isinstance(text_2, str) else text_2
    firsts = t1 * len(t2) if len(t1) == 1 else t1
    np.testing.assert_allclose(scores(body), _cos_sim(default_st, firsts, t2), atol=1e-4)
    lengths = {t: len(default_tok(t)["input_ids"]) for t in [*t1, *t2]}
    expected = sum(lengths[a] + lengths[b] for a, b in zip(firsts, t2, strict=True))
    assert body["usage"] == expected_usage(expected)


def test_embedding_model_embeds_each_text_once(
    default_url: str, default_ctx: ServingContext
) -> None:
    cluster.in_process_only("reads the in-process engine's counters")
    stats = default_ctx.engine.stats
    before = stats.sequences
    ok(post(default_url, "/score", {"text_1": Q, "text_2": [*DOCS, DOCS[0]]}))
    assert stats.sequences - before == 1 + len(DOCS)  # text_1 once, the repeat once
    before = stats.sequences
    ok(post(default_url, "/v1/score", {"text_1": [Q, Q], "text_2": [Q, DOCS[0]]}))
    assert stats.sequences - before == 2


@pytest.mark.parametrize("switch", ["activation", "use_activation", "normalize", "softmax"])
def test_embedding_model_rejects_activation(default_url: str, switch: str) -> None:
    resp = post(default_url, "/score", {"text_1": Q, "text_2": DOCS, switch: False})
    assert_error(resp, 400, param=switch, contains=switch)


def test_embedding_model_over_length_is_400(
    default_url: str, default_tok: PreTrainedTokenizerBase
) -> None:
    text = "word " * 300
    n = len(default_tok(text)["input_ids"])
    resp = post(default_url, "/score", {"text_1": Q, "text_2": text})
    assert_error(resp, 400, message=context_message(DEFAULT_MAX_LEN, n, "score"))
    body = ok(post(default_url, "/score", {"text_1": Q, "text_2": text,
                                           "truncate_prompt_tokens": 16}))  # fmt: skip
    assert len(scores(body)) == 1
