"""Pad a batch of token sequences into the int64 arrays every runtime takes."""

from __future__ import annotations

import numpy as np

from ..models.base import Batch


def pad_batch(
    batch: Batch,
    *,
    pad_token_id: int,
    token_types: bool,
    left: bool = False,
    multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(input_ids, attention_mask, token_type_ids or None), each int64 [rows, width].

    ``width`` is the longest sequence rounded up to ``multiple``; rows are padded on the
    right (or the left) with ``pad_token_id`` and mask 0.
    """
    seqs = batch.sequences
    width = max(len(s) for s in seqs)
    width += -width % multiple
    ids = np.full((len(seqs), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    types = np.zeros((len(seqs), width), dtype=np.int64) if token_types else None
    for row, seq in enumerate(seqs):
        n = len(seq)
        cols = slice(width - n, width) if left else slice(0, n)
        ids[row, cols] = seq.token_ids
        mask[row, cols] = 1
        if types is not None and seq.token_type_ids is not None:
            types[row, cols] = seq.token_type_ids
    return ids, mask, types
