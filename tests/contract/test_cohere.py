"""Cohere's embed API: POST /v2/embed (and /v1/embed), with the cohere SDK as a client.

Expected values are recomputed here from the float vectors (docs/cohere.md's rules) and
checked against /v1/embeddings and sentence-transformers on the same weights.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cohere
import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from poolserve.serving.cohere import prompt_name_for
from tests.conftest import make_context, serve_in_thread
from tests.contract.util import (
    DEFAULT_NAME,
    TINY_MAX_LEN,
    TINY_NAMES,
    assert_error,
    context_message,
    embed,
    ok,
    post,
    unit,
)
from tests.fixtures.several import one_model

TEXTS = ["The weather today is sunny.", "Machine learning turns text into vectors.", "Hi"]
# Distinct words, so keeping the first or the last tokens gives different inputs.
LONG = " ".join(f"w{i}" for i in range(120))
KNOWN_TYPES = ("search_query", "search_document", "classification", "clustering", "image")
ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
PROMPTS = {"query": "query: ", "passage": "passage: ", "clustering": "cluster this: "}
PROMPT_NAME = "tiny-prompts"


def client_for(url: str) -> cohere.ClientV2:
    return cohere.ClientV2(base_url=url, api_key="x", max_retries=0, timeout=30)


def v2(url: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return ok(post(url, "/v2/embed", body, **kwargs))


def floats(url: str, texts: list[str], **fields: Any) -> np.ndarray:
    """The ``float`` embeddings of /v2/embed as float32 [n, dim]."""
    body = v2(url, {"texts": texts, **fields})
    return np.asarray(body["embeddings"]["float"], dtype=np.float32)


def n_tokens(tok: PreTrainedTokenizerBase, texts: list[str]) -> int:
    return sum(len(tok(t)["input_ids"]) for t in texts)


# --- independent recomputation of docs/cohere.md's encodings --------------------------


def expect_int8(x: np.ndarray) -> np.ndarray:
    out = []
    for row in np.asarray(x, dtype=np.float64):
        norm = float(np.sqrt(np.sum(row * row)))
        out.append([int(np.rint(127.0 * v / norm)) for v in row])
    return np.asarray(out)


def expect_ubinary(x: np.ndarray) -> np.ndarray:
    out = []
    for row in x:
        bits = [1 if v >= 0 else 0 for v in row]
        out.append([int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8)])
    return np.asarray(out)


# --- servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_dir(tiny: Callable[..., Path]) -> Path:
    """A tiny ST folder with prompts: ``query``, ``passage`` (no ``document``, so
    search_document falls through to it) and ``clustering``; no ``classification``."""
    path: Path = tiny("st", prompts=PROMPTS)
    return path


@pytest.fixture(scope="module")
def prompt_url(prompt_dir: Path) -> Iterator[str]:
    with serve_in_thread(make_context(prompt_dir, served_model_name=(PROMPT_NAME,))) as url:
        yield url


# --- the SDK ------------------------------------------------------------------------------


def test_sdk_float(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    resp = client_for(default_url).embed(
        texts=TEXTS, model=DEFAULT_NAME, input_type="search_document", embedding_types=["float"]
    )
    got = np.asarray(resp.embeddings.float_, dtype=np.float32)
    assert got.shape == (3, 384)
    np.testing.assert_array_equal(got, embed(default_url, TEXTS))
    assert resp.texts == TEXTS
    assert resp.id.startswith("embd-")
    assert resp.response_type == "embeddings_by_type"
    assert resp.meta is not None and resp.meta.api_version is not None
    assert resp.meta.api_version.version == "2"
    assert resp.meta.billed_units is not None
    assert resp.meta.billed_units.input_tokens == n_tokens(default_tok, TEXTS)
    for t in ("int8", "uint8", "binary", "ubinary", "base64"):
        assert getattr(resp.embeddings, t) is None


def test_sdk_every_type(tiny_url: str) -> None:
    resp = client_for(tiny_url).embed(
        texts=TEXTS, model=TINY_NAMES[0], input_type="search_query", embedding_types=ALL_TYPES
    )
    e = resp.embeddings
    x = np.asarray(e.float_, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(e.int8), expect_int8(x))
    np.testing.assert_array_equal(np.asarray(e.uint8), expect_int8(x) + 128)
    np.testing.assert_array_equal(np.asarray(e.ubinary), expect_ubinary(x))
    np.testing.assert_array_equal(np.asarray(e.binary), expect_ubinary(x) - 128)
    assert e.base64 is not None
    decoded = [np.frombuffer(base64.b64decode(s), dtype="<f4") for s in e.base64]
    np.testing.assert_array_equal(np.stack(decoded), x)


def test_sdk_truncation_and_dimension(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    resp = client_for(tiny_url).embed(
        texts=[LONG],
        model=TINY_NAMES[0],
        input_type="search_document",
        truncate="START",
        max_tokens=20,
        output_dimension=16,
    )
    want = embed(tiny_url, [_kept_last(tiny_tok, LONG, 20)], dimensions=16)
    np.testing.assert_allclose(np.asarray(resp.embeddings.float_), want, atol=1e-6)
    assert resp.meta is not None and resp.meta.billed_units is not None
    assert resp.meta.billed_units.input_tokens == 20


def test_sdk_bad_input_type_is_bad_request(default_url: str) -> None:
    with pytest.raises(cohere.BadRequestError) as info:
        client_for(default_url).embed(texts=["hi"], model=DEFAULT_NAME, input_type="bogus")
    assert info.value.status_code == 400
    err = info.value.body["error"]
    assert err["param"] == "input_type" and "bogus" in err["message"]


def test_sdk_unknown_model_is_not_found(default_url: str) -> None:
    with pytest.raises(cohere.NotFoundError):
        client_for(default_url).embed(texts=["hi"], model="nope", input_type="search_query")


def test_sdk_v1_client(default_url: str) -> None:
    """cohere.Client (v1) posts to /v1/embed: float rows, or by type when asked."""
    co = cohere.Client(base_url=default_url, api_key="x", max_retries=0, timeout=30)
    plain = co.embed(texts=TEXTS, model=DEFAULT_NAME, input_type="search_query")
    assert plain.response_type == "embeddings_floats"
    np.testing.assert_array_equal(
        np.asarray(plain.embeddings, dtype=np.float32), embed(default_url, TEXTS)
    )
    typed = co.embed(texts=TEXTS, model=DEFAULT_NAME, embedding_types=["ubinary"])
    assert typed.response_type == "embeddings_by_type"
    assert np.asarray(typed.embeddings.ubinary).shape == (3, 384 // 8)


# --- the wire shape -----------------------------------------------------------------------


def test_wire_shape(default_url: str, default_tok: PreTrainedTokenizerBase) -> None:
    body = v2(default_url, {"texts": TEXTS, "model": DEFAULT_NAME, "input_type": "image"})
    assert list(body) == ["id", "embeddings", "texts", "meta", "response_type"]
    assert body["response_type"] == "embeddings_by_type"
    assert list(body["embeddings"]) == ["float"]  # the default type
    assert body["texts"] == TEXTS
    assert body["meta"] == {
        "api_version": {"version": "2"},
        "billed_units": {"input_tokens": n_tokens(default_tok, TEXTS), "image_tokens": 0},
    }


def test_request_id_names_the_response(tiny_url: str) -> None:
    body = v2(tiny_url, {"texts": ["hi"]}, headers={"X-Request-Id": "abc-123"})
    assert body["id"] == "embd-abc-123"


def test_every_type_on_the_wire(default_url: str) -> None:
    body = v2(default_url, {"texts": TEXTS, "embedding_types": ALL_TYPES[::-1]})
    e = body["embeddings"]
    assert list(e) == ALL_TYPES  # one key per type, in the SDK's order
    x = np.asarray(e["float"], dtype=np.float32)
    np.testing.assert_array_equal(x, embed(default_url, TEXTS))
    int8 = np.asarray(e["int8"])
    np.testing.assert_array_equal(int8, expect_int8(x))
    assert int8.min() >= -127 and int8.max() <= 127
    np.testing.assert_array_equal(np.asarray(e["uint8"]), expect_int8(x) + 128)
    np.testing.assert_array_equal(np.asarray(e["ubinary"]), expect_ubinary(x))
    np.testing.assert_array_equal(np.asarray(e["binary"]), expect_ubinary(x) - 128)
    assert np.asarray(e["binary"]).shape == (3, 384 // 8)
    decoded = [np.frombuffer(base64.b64decode(s), dtype="<f4") for s in e["base64"]]
    np.testing.assert_array_equal(np.stack(decoded), x)
    # int8 keeps the geometry: cosine against the float vectors
    cos = np.sum(unit(int8) * unit(x), axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("types", [None, [], ["float", "float"]])
def test_default_and_repeated_types(tiny_url: str, types: list[str] | None) -> None:
    body = v2(tiny_url, {"texts": ["hi"], "embedding_types": types})
    assert list(body["embeddings"]) == ["float"]


# --- input_type -----------------------------------------------------------------------------


@pytest.mark.parametrize("input_type", [*KNOWN_TYPES, None])
def test_input_type_without_prompts_embeds_as_is(default_url: str, input_type: str) -> None:
    fields = {} if input_type is None else {"input_type": input_type}
    np.testing.assert_array_equal(floats(default_url, TEXTS, **fields), embed(default_url, TEXTS))


@pytest.mark.parametrize("bad", ["bogus", "SEARCH_QUERY", "query", ""])
def test_unknown_input_type_is_400(default_url: str, bad: str) -> None:
    resp = post(default_url, "/v2/embed", {"texts": ["hi"], "input_type": bad})
    assert_error(resp, 400, param="input_type", contains=("Unsupported input_type", repr(bad)))


@pytest.mark.parametrize(
    ("input_type", "prefix"),
    [
        ("search_query", "query: "),
        ("search_document", "passage: "),  # no "document" prompt: ST's next name
        ("clustering", "cluster this: "),
        ("classification", ""),  # no such prompt: the text as is
        ("image", ""),
        ("query", "query: "),  # a prompt's own name (vLLM's lookup)
        ("passage", "passage: "),
    ],
)
def test_input_type_picks_the_prompt(prompt_url: str, input_type: str, prefix: str) -> None:
    got = floats(prompt_url, TEXTS, input_type=input_type)
    np.testing.assert_array_equal(got, embed(prompt_url, [prefix + t for t in TEXTS]))


def test_prompt_matches_sentence_transformers(prompt_url: str, prompt_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(prompt_dir), device="cpu")
    for input_type, name in [("search_query", "query"), ("search_document", "passage")]:
        got = floats(prompt_url, TEXTS, input_type=input_type)
        want = st.encode(TEXTS, prompt_name=name, convert_to_numpy=True)
        assert np.sum(unit(got) * unit(want), axis=1).min() >= 0.9999
        assert np.sum(unit(got) * unit(st.encode(TEXTS)), axis=1).min() < 0.9999


def test_prompt_tokens_are_billed(prompt_url: str, prompt_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(prompt_dir)
    body = v2(prompt_url, {"texts": TEXTS, "input_type": "search_query"})
    assert body["texts"] == TEXTS  # echoed without the prompt
    billed = body["meta"]["billed_units"]["input_tokens"]
    assert billed == n_tokens(tok, ["query: " + t for t in TEXTS])


def test_unknown_input_type_lists_the_prompts(prompt_url: str) -> None:
    resp = post(prompt_url, "/v2/embed", {"texts": ["hi"], "input_type": "bogus"})
    err = assert_error(resp, 400, param="input_type")
    for name in [*KNOWN_TYPES, *PROMPTS]:
        assert name in err["message"]


def test_prompt_name_for() -> None:
    nomic = {"search_query": "search_query: ", "query": "q: ", "document": "d: "}
    assert prompt_name_for("search_query", nomic) == "search_query"  # exact name first
    assert prompt_name_for("search_document", nomic) == "document"
    assert prompt_name_for("search_document", {"corpus": "", "passage": ""}) == "passage"
    assert prompt_name_for("search_document", {"corpus": "c: "}) == "corpus"
    assert prompt_name_for("classification", nomic) is None
    assert prompt_name_for(None, nomic) is None
    assert prompt_name_for("d", {"d": "x"}) == "d"
    for known in KNOWN_TYPES:
        assert prompt_name_for(known, {}) is None


# --- truncate / max_tokens ------------------------------------------------------------------


def _kept_last(tok: PreTrainedTokenizerBase, text: str, k: int) -> list[int]:
    """[CLS] + the last k-2 tokens of ``text`` + [SEP]."""
    ids = tok(text)["input_ids"]
    return [ids[0], *ids[1:-1][-(k - 2) :], ids[-1]]


def test_truncate_end_is_the_default(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    assert len(tiny_tok(LONG)["input_ids"]) > TINY_MAX_LEN
    want = embed(tiny_url, [LONG], truncate_prompt_tokens=-1)
    np.testing.assert_array_equal(floats(tiny_url, [LONG]), want)
    np.testing.assert_array_equal(floats(tiny_url, [LONG], truncate="END"), want)
    np.testing.assert_array_equal(floats(tiny_url, [LONG], truncate=None), want)
    billed = v2(tiny_url, {"texts": [LONG]})["meta"]["billed_units"]["input_tokens"]
    assert billed == TINY_MAX_LEN


def test_truncate_start_keeps_the_last_tokens(
    tiny_url: str, tiny_tok: PreTrainedTokenizerBase
) -> None:
    got = floats(tiny_url, [LONG], truncate="START")
    want = embed(tiny_url, [_kept_last(tiny_tok, LONG, TINY_MAX_LEN)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    end = floats(tiny_url, [LONG], truncate="END")
    assert float(np.sum(unit(got) * unit(end))) < 0.9999


def test_truncate_none_refuses(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    n = len(tiny_tok(LONG)["input_ids"])
    resp = post(tiny_url, "/v2/embed", {"texts": ["hi", LONG], "truncate": "NONE"})
    assert_error(resp, 400, param="texts", message=context_message(TINY_MAX_LEN, n))
    short = floats(tiny_url, TEXTS, truncate="NONE")
    np.testing.assert_array_equal(short, embed(tiny_url, TEXTS))


def test_max_tokens(tiny_url: str, tiny_tok: PreTrainedTokenizerBase) -> None:
    text = TEXTS[1]
    end = floats(tiny_url, [text], max_tokens=5)
    np.testing.assert_array_equal(end, embed(tiny_url, [text], truncate_prompt_tokens=5))
    start = floats(tiny_url, [text], max_tokens=5, truncate="START")
    np.testing.assert_allclose(start, embed(tiny_url, [_kept_last(tiny_tok, text, 5)]), atol=1e-6)
    n = len(tiny_tok(text)["input_ids"])
    resp = post(tiny_url, "/v2/embed", {"texts": [text], "max_tokens": 5, "truncate": "NONE"})
    assert_error(resp, 400, param="max_tokens", contains=(f"Input of {n} tokens", "NONE"))
    fits = floats(tiny_url, [text], max_tokens=n, truncate="NONE")
    np.testing.assert_array_equal(fits, embed(tiny_url, [text]))


@pytest.mark.parametrize("bad", [0, -1, TINY_MAX_LEN + 1])
def test_bad_max_tokens(tiny_url: str, bad: int) -> None:
    resp = post(tiny_url, "/v2/embed", {"texts": ["hi"], "max_tokens": bad})
    assert_error(resp, 400, param="max_tokens", contains="max_tokens")


# --- output_dimension -----------------------------------------------------------------------


def test_output_dimension(tiny_url: str) -> None:
    body = v2(tiny_url, {"texts": TEXTS, "output_dimension": 16, "embedding_types": ALL_TYPES})
    x = np.asarray(body["embeddings"]["float"], dtype=np.float32)
    np.testing.assert_array_equal(x, embed(tiny_url, TEXTS, dimensions=16))
    assert np.asarray(body["embeddings"]["ubinary"]).shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(body["embeddings"]["int8"]), expect_int8(x))


def test_output_dimension_errors(default_url: str, tiny_url: str) -> None:
    resp = post(default_url, "/v2/embed", {"texts": ["hi"], "output_dimension": 128})
    assert_error(resp, 400, param="output_dimension", contains="matryoshka")
    resp = post(tiny_url, "/v2/embed", {"texts": ["hi"], "output_dimension": 0})
    assert_error(resp, 400, param="output_dimension")
    resp = post(tiny_url, "/v2/embed", {"texts": ["hi"], "output_dimension": 10_000})
    assert_error(resp, 400, param="output_dimension")


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_binary_needs_a_multiple_of_8(tiny_url: str, kind: str) -> None:
    body = {"texts": ["hi"], "output_dimension": 12, "embedding_types": [kind]}
    resp = post(tiny_url, "/v2/embed", body)
    assert_error(resp, 400, param="embedding_types", contains="multiple of 8")
    assert len(floats(tiny_url, ["hi"], output_dimension=12)[0]) == 12


# --- bad requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "texts"),
        ({"texts": []}, "texts"),
        ({"texts": None}, "texts"),
        ({"texts": "hi"}, "texts"),
        ({"texts": ["hi", 3]}, "texts"),
        ({"images": ["data:image/png;base64,AAAA"]}, "images"),
        ({"inputs": [{"content": [{"type": "text", "text": "hi"}]}]}, "inputs"),
        ({"texts": ["hi"], "images": ["data:image/png;base64,AAAA"]}, "images"),
        ({"texts": ["hi"], "embedding_types": ["float16"]}, "embedding_types"),
        ({"texts": ["hi"], "embedding_types": "float"}, "embedding_types"),
        ({"texts": ["hi"], "truncate": "MIDDLE"}, "truncate"),
        ({"texts": ["hi"], "truncate": "end"}, "truncate"),
        ({"texts": ["hi"], "input_type": 3}, "input_type"),
        ({"texts": ["hi"], "max_tokens": "5"}, "max_tokens"),
        ({"texts": ["hi"], "output_dimension": 16.0}, "output_dimension"),
        ({"texts": ["hi"], "priority": 1}, "priority"),
    ],
)
def test_bad_requests_are_400(tiny_url: str, body: dict[str, Any], param: str) -> None:
    assert_error(post(tiny_url, "/v2/embed", body), 400, param=param)


def test_unknown_model_is_404(tiny_url: str) -> None:
    assert_error(post(tiny_url, "/v2/embed", {"texts": ["hi"], "model": "nope"}), 404)
    body = v2(tiny_url, {"texts": ["hi"], "model": TINY_NAMES[1]})
    assert len(body["embeddings"]["float"]) == 1


@one_model
def test_classifier_has_no_embed(classifier_url: str) -> None:
    resp = post(classifier_url, "/v2/embed", {"texts": ["hi"]})
    assert_error(resp, 400, message="The model does not support Embeddings API")
