"""`dimensions` on /v1/embeddings: matryoshka models only; slice to d, then normalize."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.contract.util import (
    DEFAULT_NAME,
    MRL_LIST,
    TINY_NAMES,
    assert_error,
    embed,
    ok,
    post,
    unit,
    vectors,
)

TEXTS = ["The cat sits on the mat.", "Paris is the capital of France."]


@pytest.mark.parametrize("d", [1, 5, 16, 32])
def test_slice_then_normalize(tiny_url: str, d: int) -> None:
    raw = embed(tiny_url, TEXTS, normalize=False)
    body = ok(post(tiny_url, "/v1/embeddings", {"input": TEXTS, "dimensions": d}))
    got = vectors(body)
    assert got.shape == (2, d)
    np.testing.assert_allclose(got, unit(raw[:, :d]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Not the same as normalizing first and slicing after (unless d is the full size).
    if d < 32:
        assert not np.allclose(got, unit(raw)[:, :d], atol=1e-3)


def test_dimensions_without_normalize_is_a_plain_slice(tiny_url: str) -> None:
    raw = embed(tiny_url, TEXTS, normalize=False)
    got = embed(tiny_url, TEXTS, normalize=False, dimensions=8)
    np.testing.assert_allclose(got, raw[:, :8], atol=1e-6)


def test_dimensions_with_base64(tiny_url: str) -> None:
    floats = embed(tiny_url, TEXTS, dimensions=8)
    body = ok(
        post(
            tiny_url,
            "/v1/embeddings",
            {"input": TEXTS, "dimensions": 8, "encoding_format": "base64"},
        )
    )
    np.testing.assert_array_equal(vectors(body), floats)


@pytest.mark.parametrize("d", [0, -1])
def test_dimensions_below_one_is_400(tiny_url: str, d: int) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "dimensions": d})
    assert_error(resp, 400, contains="dimensions")


def test_dimensions_over_the_model_size_is_400(tiny_url: str) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "dimensions": 33})
    assert_error(resp, 400, contains="dimensions")


@pytest.mark.parametrize("bad", ["8", 8.5, True])
def test_dimensions_of_wrong_type_is_400(tiny_url: str, bad: Any) -> None:
    resp = post(tiny_url, "/v1/embeddings", {"input": "hi", "dimensions": bad})
    assert_error(resp, 400, contains="dimensions", param="dimensions")


def test_listed_dimensions_only(flags_url: str) -> None:
    raw = embed(flags_url, TEXTS, normalize=False)
    for d in MRL_LIST:
        np.testing.assert_allclose(
            embed(flags_url, TEXTS, dimensions=d), unit(raw[:, :d]), atol=1e-5
        )
    for d in (4, 12, 32):
        resp = post(flags_url, "/v1/embeddings", {"input": "hi", "dimensions": d})
        assert_error(resp, 400, contains=str(d))
    assert_error(post(flags_url, "/v1/embeddings", {"input": "hi", "dimensions": 0}), 400)


def test_not_matryoshka_is_400(default_url: str) -> None:
    resp = post(default_url, "/v1/embeddings", {"input": "hi", "dimensions": 128})
    assert_error(
        resp,
        400,
        contains=f'Model "{DEFAULT_NAME}" does not support matryoshka representation',
    )


def test_not_matryoshka_names_the_requested_model(tiny_url: str, default_url: str) -> None:
    # The tiny model is matryoshka; the message names the model the client asked for.
    ok(post(tiny_url, "/v1/embeddings", {"input": "hi", "dimensions": 8, "model": TINY_NAMES[1]}))
    resp = post(default_url, "/v1/embeddings", {"input": "hi", "dimensions": 8, "model": ""})
    assert_error(resp, 400, contains=f'Model "{DEFAULT_NAME}"')
