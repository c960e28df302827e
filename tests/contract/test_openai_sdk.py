"""The official openai SDK as the client: `embeddings.create` and `models.list`."""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
import pytest
from transformers import PreTrainedTokenizerBase

from tests.contract.util import (
    DEFAULT_MAX_LEN,
    DEFAULT_NAME,
    TINY_NAMES,
    embed,
    unit,
)
from tests.fixtures.several import one_model

TEXTS = ["The weather today is sunny.", "Machine learning turns text into vectors.", "Hi"]


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def default_client(default_url: str) -> openai.OpenAI:
    return client_for(default_url)


@pytest.fixture(scope="module")
def tiny_client(tiny_url: str) -> openai.OpenAI:
    return client_for(tiny_url)


def as_array(resp: Any) -> np.ndarray:
    assert [d.index for d in resp.data] == list(range(len(resp.data)))
    return np.asarray([d.embedding for d in resp.data], dtype=np.float32)


def test_sdk_default_asks_for_base64(default_client: openai.OpenAI, default_url: str) -> None:
    raw = default_client.embeddings.with_raw_response.create(input=TEXTS, model=DEFAULT_NAME)
    wire = raw.http_response.json()
    assert all(isinstance(d["embedding"], str) for d in wire["data"])
    resp = raw.parse()  # the SDK decodes base64 itself
    got = as_array(resp)
    assert got.shape == (3, 384)
    np.testing.assert_array_equal(got, embed(default_url, TEXTS))


def test_sdk_float(
    default_client: openai.OpenAI, default_url: str, default_tok: PreTrainedTokenizerBase
) -> None:
    resp = default_client.embeddings.create(
        input=TEXTS, model=DEFAULT_NAME, encoding_format="float"
    )
    assert resp.object == "list" and resp.model == DEFAULT_NAME
    assert resp.id.startswith("embd-")  # type: ignore[attr-defined]
    assert all(d.object == "embedding" for d in resp.data)
    got = as_array(resp)
    np.testing.assert_array_equal(got, embed(default_url, TEXTS))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    n = sum(len(default_tok(t)["input_ids"]) for t in TEXTS)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == n


def test_sdk_base64_and_float_agree(tiny_client: openai.OpenAI) -> None:
    a = as_array(tiny_client.embeddings.create(input=TEXTS, model=TINY_NAMES[0]))
    b = as_array(
        tiny_client.embeddings.create(input=TEXTS, model=TINY_NAMES[0], encoding_format="float")
    )
    np.testing.assert_array_equal(a, b)


def test_sdk_token_ids(tiny_client: openai.OpenAI, tiny_url: str) -> None:
    ids = [[2, 40, 41, 42, 3], [2, 99, 3]]
    resp = tiny_client.embeddings.create(input=ids, model=TINY_NAMES[1])
    assert resp.model == TINY_NAMES[1]
    np.testing.assert_allclose(as_array(resp), embed(tiny_url, ids), atol=1e-6)
    single = tiny_client.embeddings.create(input=ids[0], model=TINY_NAMES[0])
    np.testing.assert_allclose(as_array(single), embed(tiny_url, ids[0]), atol=1e-6)


def test_sdk_dimensions(tiny_client: openai.OpenAI, tiny_url: str) -> None:
    raw = embed(tiny_url, TEXTS, normalize=False)
    for fmt in ("float", "base64"):
        resp = tiny_client.embeddings.create(
            input=TEXTS, model=TINY_NAMES[0], dimensions=8, encoding_format=fmt
        )
        if fmt == "base64":
            from tests.contract.util import decode

            got = np.stack([decode(d.embedding) for d in resp.data])  # type: ignore[arg-type]
        else:
            got = as_array(resp)
        np.testing.assert_allclose(got, unit(raw[:, :8]), atol=1e-5)


def test_sdk_extra_body(tiny_client: openai.OpenAI, tiny_url: str) -> None:
    resp = tiny_client.embeddings.create(
        input=TEXTS[0],
        model=TINY_NAMES[0],
        extra_body={"truncate_prompt_tokens": 4, "normalize": False},
    )
    assert resp.usage.prompt_tokens == 4
    np.testing.assert_allclose(
        as_array(resp), embed(tiny_url, TEXTS[0], truncate_prompt_tokens=4, normalize=False)
    )


def test_sdk_errors(default_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        default_client.embeddings.create(input="hi", model="no-such-model")
    assert not_found.value.status_code == 404
    assert "The model `no-such-model` does not exist." in str(not_found.value)

    with pytest.raises(openai.BadRequestError) as too_long:
        default_client.embeddings.create(input="hello " * 300, model=DEFAULT_NAME)
    assert f"maximum context length is {DEFAULT_MAX_LEN} tokens" in str(too_long.value)

    with pytest.raises(openai.BadRequestError) as no_mrl:
        default_client.embeddings.create(input="hi", model=DEFAULT_NAME, dimensions=64)
    assert "matryoshka" in str(no_mrl.value)

    with pytest.raises(openai.BadRequestError):
        default_client.embeddings.create(input=[], model=DEFAULT_NAME, encoding_format="float")


@one_model
def test_sdk_models_list(tiny_client: openai.OpenAI, default_client: openai.OpenAI) -> None:
    assert [m.id for m in tiny_client.models.list()] == list(TINY_NAMES)
    [card] = list(default_client.models.list())
    assert card.id == DEFAULT_NAME and card.owned_by == "poolserve" and card.object == "model"
