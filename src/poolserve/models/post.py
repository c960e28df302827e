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


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b`` (zero rows give 0)."""
    a = finish_embeddings(a, dimensions=None, normalize=True)
    b = finish_embeddings(b, dimensions=None, normalize=True)
    return np.asarray(np.einsum("ij,ij->i", a, b), dtype=np.float32)
