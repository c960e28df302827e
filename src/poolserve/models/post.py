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
