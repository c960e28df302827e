"""Hugging Face text-embeddings-inference (TEI) routes, part 1: /embed, /embed_all,
/similarity, TEI's error shape and task gating, prompts, and huggingface_hub's
InferenceClient (docs/tei.md; part 2: test_tei_clients.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.conftest import make_context, serve_in_thread
from tests.contract.util import (
    DEFAULT_MAX_LEN,
    MRL_LIST,
    assert_error,
    assert_tei_error,
    embed,
    ok,
    post,
    tei_ok,
    unit,
    vectors,
)
from tests.fixtures.several import one_model

TEXTS = ["the cat sits on the mat", "Paris is the capital of France", "dogs are pets"]
QUERY = "which city has the most people"
DOCS = [
    "many people live in large cities",
    "the cat sits on the mat near the door",
    "Paris is the capital and largest city of France",
]
LONG = "the quick brown fox jumps over the lazy dog " * 40  # > 256 tokens


@pytest.fixture(scope="module")
def prompts_dir(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ST folder whose sentence-transformers config names two prompts."""
    out = tmp_path_factory.mktemp("tei-prompts") / "model"
    shutil.copytree(tiny("st"), out)
    path = out / "config_sentence_transformers.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config["prompts"] = {"query": "query: ", "passage": "passage: "}
    path.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def prompts_url(prompts_dir: Path) -> Iterator[str]:
    with serve_in_thread(make_context(prompts_dir)) as url:
        yield url


# -- /embed ---------------------------------------------------------------------------


def test_embed_equals_openai_embeddings(default_url: str) -> None:
    body = tei_ok(post(default_url, "/embed", {"inputs": TEXTS}))
    assert isinstance(body, list) and len(body) == len(TEXTS)
    assert all(isinstance(row, list) and len(row) == 384 for row in body)
    np.testing.assert_allclose(np.asarray(body), embed(default_url, TEXTS), atol=1e-6)
    single = tei_ok(post(default_url, "/embed", {"inputs": TEXTS[0]}))
    assert len(single) == 1  # one input still answers a list of rows
    np.testing.assert_allclose(single[0], body[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(body, axis=1), 1.0, atol=1e-5)  # normalize: true


def test_embed_normalize_false(default_url: str) -> None:
    raw = tei_ok(post(default_url, "/embed", {"inputs": TEXTS, "normalize": False}))
    expected = embed(default_url, TEXTS, normalize=False)
    np.testing.assert_allclose(np.asarray(raw), expected, atol=1e-6)
    np.testing.assert_allclose(unit(np.asarray(raw)), embed(default_url, TEXTS), atol=1e-6)


def test_embed_token_ids(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    """Ids go in as given (TEI adds no special tokens to them); ids and texts mix."""
    ids = list(default_tok(TEXTS[0])["input_ids"])
    mixed = tei_ok(post(default_url, "/embed", {"inputs": [ids, TEXTS[1]]}))
    np.testing.assert_allclose(np.asarray(mixed), embed(default_url, TEXTS[:2]), atol=1e-6)
    one = tei_ok(post(default_url, "/embed", {"inputs": ids}))
    np.testing.assert_allclose(one[0], mixed[0], atol=1e-6)


def test_embed_over_length(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    ids = list(default_tok(LONG)["input_ids"])
    n = len(ids)
    assert n > DEFAULT_MAX_LEN
    message = (
        f"Input validation error: `inputs` must have less than {DEFAULT_MAX_LEN} tokens. Given: {n}"
    )
    for body in ({"inputs": LONG}, {"inputs": ["short", LONG], "truncate": False}):
        assert_tei_error(post(default_url, "/embed", body), 422, "Validation", message)
    # truncate: the right side is cut (special tokens kept), as /v1/embeddings' -1 does
    right = tei_ok(post(default_url, "/embed", {"inputs": LONG, "truncate": True}))
    np.testing.assert_allclose(
        right[0], embed(default_url, LONG, truncate_prompt_tokens=-1)[0], atol=1e-6
    )
    # Left keeps the last tokens: [CLS] + the text's last 254 tokens + [SEP]
    left = tei_ok(
        post(
            default_url,
            "/embed",
            {"inputs": LONG, "truncate": True, "truncation_direction": "Left"},
        )
    )
    kept = [ids[0], *ids[1:-1][-(DEFAULT_MAX_LEN - 2) :], ids[-1]]
    np.testing.assert_allclose(left[0], embed(default_url, [kept])[0], atol=1e-6)
    assert not np.allclose(left[0], right[0], atol=1e-3)
    lower = post(
        default_url, "/embed", {"inputs": LONG, "truncate": True, "truncation_direction": "left"}
    )
    np.testing.assert_allclose(tei_ok(lower), left, atol=1e-6)
    # over-long token ids are cut the same ways
    cut = tei_ok(post(default_url, "/embed", {"inputs": ids, "truncate": True}))
    np.testing.assert_allclose(cut[0], embed(default_url, [ids[:DEFAULT_MAX_LEN]])[0], atol=1e-6)


def test_embed_dimensions(tiny_url: str) -> None:
    d = MRL_LIST[0]
    body = tei_ok(post(tiny_url, "/embed", {"inputs": TEXTS, "dimensions": d}))
    assert {len(row) for row in body} == {d}
    np.testing.assert_allclose(np.asarray(body), embed(tiny_url, TEXTS, dimensions=d), atol=1e-6)
    assert_tei_error(
        post(tiny_url, "/embed", {"inputs": "a", "dimensions": 0}),
        422,
        "Validation",
        "Input validation error: `dimensions` should be positive",
    )
    assert_tei_error(
        post(tiny_url, "/embed", {"inputs": "a", "dimensions": 10_000}),
        422,
        "Validation",
        "Input validation error: `dimensions` should be smaller than the maximum embedding "
        "dimension.",
    )


def test_embed_prompt_name(prompts_url: str, prompts_dir: Path) -> None:
    named = tei_ok(post(prompts_url, "/embed", {"inputs": TEXTS, "prompt_name": "query"}))
    expected = embed(prompts_url, [f"query: {t}" for t in TEXTS])
    np.testing.assert_allclose(np.asarray(named), expected, atol=1e-6)
    # token ids with a prompt are decoded, prompted and tokenized again, as TEI does
    ids = list(AutoTokenizer.from_pretrained(prompts_dir)("cats")["input_ids"])
    from_ids = tei_ok(post(prompts_url, "/embed", {"inputs": [ids], "prompt_name": "query"}))
    np.testing.assert_allclose(from_ids, embed(prompts_url, "query: cats"), atol=1e-6)
    plain = tei_ok(post(prompts_url, "/embed", {"inputs": TEXTS}))
    np.testing.assert_allclose(np.asarray(plain), embed(prompts_url, TEXTS), atol=1e-6)
    error = assert_tei_error(
        post(prompts_url, "/embed", {"inputs": "a", "prompt_name": "nope"}), 422, "Validation"
    )
    assert "nope" in error


@pytest.mark.parametrize(
    ("body", "status", "error_type", "message"),
    [
        ({"inputs": []}, 400, "Empty", "Input validation error: `inputs` cannot be empty"),
        ({"inputs": ""}, 400, "Empty", "Input validation error: `inputs` cannot be empty"),
        ({"inputs": ["a", ""]}, 400, "Empty", "Input validation error: `inputs` cannot be empty"),
        ({"inputs": 5}, 422, "Validation", None),
        ({"inputs": ["a", 5]}, 422, "Validation", None),
        ({"inputs": [-1]}, 422, "Validation", None),
        ({"inputs": "a", "truncate": "yes"}, 422, "Validation", None),
        ({"inputs": "a", "truncation_direction": "up"}, 422, "Validation", None),
        ({"inputs": "a", "normalize": 1}, 422, "Validation", None),
        ({}, 422, "Validation", None),
    ],
)
def test_embed_bad_bodies(
    default_url: str, body: dict[str, Any], status: int, error_type: str, message: str | None
) -> None:
    assert_tei_error(post(default_url, "/embed", body), status, error_type, message)


def test_too_many_inputs(default_url: str) -> None:
    n = 4097  # the server's --max-client-batch-size is 4096
    message = f"batch size {n} > maximum allowed batch size 4096"
    for path, body in [
        ("/embed", {"inputs": ["a"] * n}),
        ("/predict", {"inputs": [["a"]] * n}),
        ("/tokenize", {"inputs": ["a"] * n}),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"] * (n - 1)}}),
    ]:
        assert_tei_error(post(default_url, path, body), 422, "Validation", message)


def test_not_json_is_tei_validation(default_url: str) -> None:
    resp = requests.post(default_url + "/embed", data=b"{", timeout=30,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert_tei_error(resp, 422, "Validation")


# -- task gating: TEI's 424 ----------------------------------------------------------


@one_model
@pytest.mark.parametrize("path", ["/embed", "/embed_all"])
def test_embed_on_classifier_is_424(classifier_url: str, path: str) -> None:
    assert_tei_error(
        post(classifier_url, path, {"inputs": "a"}),
        424,
        "Backend",
        "Backend error: Model is not an embedding model",
    )


def test_embed_sparse_is_424(default_url: str) -> None:
    message = assert_tei_error(post(default_url, "/embed_sparse", {"inputs": "a"}), 424, "Backend")
    # TEI's words, then what the model lacks (ModelInfo.sparse_problem)
    assert message.startswith("Backend error: Model is not an embedding model with SPLADE pooling")


@one_model
def test_predict_on_embedding_model_is_424(default_url: str) -> None:
    assert_tei_error(
        post(default_url, "/predict", {"inputs": "a"}),
        424,
        "Backend",
        "Backend error: Model is not a classifier model",
    )


@one_model
def test_tei_rerank_on_classifier_is_424(classifier_url: str) -> None:
    assert_tei_error(
        post(classifier_url, "/rerank", {"query": "q", "texts": ["a"]}),
        424,
        "Backend",
        "Backend error: model is not a re-ranker model",
    )


# -- /embed_all, /similarity --------------------------------------------------------


def test_embed_all(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    body = tei_ok(post(default_url, "/embed_all", {"inputs": TEXTS[:2]}))
    pooled = post(default_url, "/pooling", {"input": TEXTS[:2], "task": "token_embed",
                                            "normalize": False})  # fmt: skip
    expected = [np.asarray(d["data"]) for d in ok(pooled)["data"]]
    assert len(body) == 2
    for rows, want, text in zip(body, expected, TEXTS, strict=False):
        assert len(rows) == len(default_tok(text)["input_ids"])  # every token, specials too
        np.testing.assert_allclose(np.asarray(rows), want, atol=1e-6)
    # the mean of the token rows is the model's (mean-pooled) embedding
    mean = unit(np.asarray(body[0]).mean(axis=0))
    np.testing.assert_allclose(mean, embed(default_url, TEXTS[0])[0], atol=1e-5)


def test_similarity(default_url: str) -> None:
    req = {"inputs": {"source_sentence": QUERY, "sentences": DOCS}}
    body = tei_ok(post(default_url, "/similarity", req))
    vecs = embed(default_url, [QUERY, *DOCS])
    np.testing.assert_allclose(body, vecs[1:] @ vecs[0], atol=1e-5)
    req["parameters"] = {"truncate": True, "truncation_direction": "Left"}
    np.testing.assert_allclose(tei_ok(post(default_url, "/similarity", req)), body, atol=1e-6)
    empty = {"inputs": {"source_sentence": QUERY, "sentences": []}}
    assert_tei_error(post(default_url, "/similarity", empty), 400, "Empty",
                     "`inputs.sentences` cannot be empty")  # fmt: skip


# -- prompts, huggingface_hub -------------------------------------------------------


def test_tei_tokenize_prompt(prompts_url: str) -> None:
    tokens = tei_ok(post(prompts_url, "/tokenize", {"inputs": "cats", "prompt_name": "query"}))[0]
    pieces = [t["text"] for t in tokens if not t["special"]]
    assert "".join(pieces).replace(" ", "") == "query:cats"  # spans index the prompted text


def test_huggingface_hub_inference_client(
    default_url: str, classifier_url: str, prompts_url: str
) -> None:
    """huggingface_hub's InferenceClient posts to the URL itself (POST /)."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(default_url)
    got = client.feature_extraction("text")
    assert got.shape == (1, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, embed(default_url, "text"), atol=1e-6)
    raw = InferenceClient(base_url=default_url).feature_extraction(
        ["a", "b"], normalize=False, truncate=True, truncation_direction="left"
    )
    np.testing.assert_allclose(raw, embed(default_url, ["a", "b"], normalize=False), atol=1e-6)
    prompted = InferenceClient(prompts_url).feature_extraction("cats", prompt_name="query")
    np.testing.assert_allclose(prompted, embed(prompts_url, "query: cats"), atol=1e-6)
    sims = client.sentence_similarity(QUERY, other_sentences=DOCS)
    vecs = embed(default_url, [QUERY, *DOCS])
    np.testing.assert_allclose(sims, vecs[1:] @ vecs[0], atol=1e-5)
    # TEI answers one input with a flat list of predictions; huggingface_hub then
    # returns the best one
    top = InferenceClient(classifier_url).text_classification("text")
    best = tei_ok(post(classifier_url, "/predict", {"inputs": "text"}))[0]
    assert (top.label, top.score) == (best["label"], pytest.approx(best["score"], abs=1e-6))


@one_model
def test_huggingface_hub_sees_tei_errors(classifier_url: str) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as caught:
        InferenceClient(classifier_url + "/embed").feature_extraction("text")
    assert caught.value.response is not None and caught.value.response.status_code == 424


def test_vectors_helper_still_reads_openai_shape(default_url: str) -> None:
    """/v1/embeddings keeps its own shape and errors beside the TEI routes."""
    body = ok(post(default_url, "/v1/embeddings", {"input": "a"}))
    assert vectors(body).shape == (1, 384)
    assert_error(post(default_url, "/v1/embeddings", {"input": 5}), 400)
