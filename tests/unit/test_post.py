"""poolserve.models.post.finish_embeddings: matryoshka slice, then L2 normalization."""

from __future__ import annotations

import numpy as np
import pytest

from poolserve.models.post import finish_embeddings


def vectors() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)


def test_normalize_gives_unit_rows() -> None:
    out = finish_embeddings(vectors(), dimensions=None, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    x = vectors()
    np.testing.assert_allclose(out, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)


def test_without_normalize_values_are_kept() -> None:
    x = vectors()
    out = finish_embeddings(x, dimensions=None, normalize=False)
    np.testing.assert_array_equal(out, x)


def test_slice_then_normalize() -> None:
    x = vectors()
    out = finish_embeddings(x, dimensions=5, normalize=True)
    assert out.shape == (4, 5)
    head = x[:, :5]
    np.testing.assert_allclose(out, head / np.linalg.norm(head, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    # Not the other order: normalizing the full vector first would not give unit rows.
    full = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert not np.allclose(out, full[:, :5])


def test_slice_without_normalize() -> None:
    x = vectors()
    np.testing.assert_array_equal(finish_embeddings(x, dimensions=3, normalize=False), x[:, :3])


def test_dimensions_equal_to_width_is_identity_slice() -> None:
    x = vectors()
    np.testing.assert_array_equal(finish_embeddings(x, dimensions=16, normalize=False), x)


def test_zero_rows_stay_zero() -> None:
    x = vectors()
    x[1] = 0.0
    x[3, :4] = 0.0
    out = finish_embeddings(x, dimensions=4, normalize=True)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[3], 0.0)
    np.testing.assert_allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dimensions", [None, 7])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_output_is_float32_c_contiguous(
    dimensions: int | None, normalize: bool, dtype: type
) -> None:
    x = np.asfortranarray(vectors().astype(dtype))
    out = finish_embeddings(x, dimensions=dimensions, normalize=normalize)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert out.shape == (4, dimensions or 16)


@pytest.mark.parametrize("dimensions", [None, 7])
def test_normalizing_does_not_modify_the_input(dimensions: int | None) -> None:
    x = vectors()
    before = x.copy()
    out = finish_embeddings(x, dimensions=dimensions, normalize=True)
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(out, x)


def test_empty_batch() -> None:
    out = finish_embeddings(np.zeros((0, 8), dtype=np.float32), dimensions=4, normalize=True)
    assert out.shape == (0, 4) and out.dtype == np.float32
