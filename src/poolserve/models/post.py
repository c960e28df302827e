"""Per-request post-processing of pooled vectors (pure numpy; no torch)."""

from __future__ import annotations

import numpy as np


def finish_embeddings(
    vectors: np.ndarray, *, dimensions: int | None, normalize: bool
) -> np.ndarray:
    """Slice to ``dimensions`` (matryoshka) *then* L2-normalize, as vLLM does.

    ``vectors`` is [n, dim]; returns a C-contiguous float32 array (``vectors`` itself
    when it already is one and there is nothing to slice or normalize).
    """
    out = vectors[:, :dimensions] if dimensions is not None else vectors
    out = np.ascontiguousarray(out, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # Same guard as torch.nn.functional.normalize (eps=1e-12): zero rows stay zero.
        out = out / np.maximum(norms, 1e-12)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float32 (stable for large |x|)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32."""
    x = np.asarray(x, dtype=np.float32)
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True), dtype=np.float32)


def classify_probs(logits: np.ndarray, *, multi_label: bool) -> np.ndarray:
    """vLLM's classification activation for logits ``[n, k]``.

    Softmax over the k labels for k >= 2; sigmoid for k == 1, and per label when the
    config's problem_type is multi_label_classification.
    """
    if multi_label or logits.shape[-1] == 1:
        return sigmoid(logits)
    return softmax(logits)


def calibrate(logits: np.ndarray, mean: float | None, sigma: float | None) -> np.ndarray:
    """vLLM's affine score calibration (Platt scaling) of classifier logits, before any
    activation: ``(logit - mean) / sigma``, each step only when set."""
    if mean is not None:
        logits = logits - np.float32(mean)
    if sigma is not None:
        logits = logits / np.float32(sigma)
    return np.asarray(logits, dtype=np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b`` (zero rows give 0)."""
    a = finish_embeddings(a, dimensions=None, normalize=True)
    b = finish_embeddings(b, dimensions=None, normalize=True)
    return np.asarray(np.einsum("ij,ij->i", a, b), dtype=np.float32)


def combine_windows(
    vectors: np.ndarray, owners: np.ndarray, weights: np.ndarray, n: int, *, normalize: bool
) -> np.ndarray:
    """vLLM's chunked-processing combination: the embedding of an input embedded in
    several windows is the token-count-weighted mean of its windows' finished vectors,
    L2-normalized again when ``normalize`` (activation on) and it had 2+ windows whose
    vectors were all unit length. The same for every pooling type (CLS, MEAN, LAST).

    ``vectors`` [w, d] float32, one row per window; ``owners`` [w] the input each window
    belongs to (0..n-1, every input at least once); ``weights`` [w] its token count.
    """
    weights = weights.astype(np.float64)
    sums = np.zeros((n, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, vectors.astype(np.float64) * weights[:, None])
    totals = np.bincount(owners, weights=weights, minlength=n)
    out = (sums / totals[:, None]).astype(np.float32)
    if normalize:
        windows = np.bincount(owners, minlength=n)
        unit = np.abs(np.linalg.norm(vectors, axis=1) - 1.0) <= 1e-2
        all_unit = np.bincount(owners, weights=~unit, minlength=n) == 0
        again = (windows > 1) & all_unit
        if again.any():
            out[again] = finish_embeddings(out[again], dimensions=None, normalize=True)
    return out
