"""bge-m3's lexical (sparse) weights on the wire; models/bge_m3.py says what they are.

The backend returns ``sparse_linear(hidden)`` of every real token (per_token ``head``
rows ``[num_tokens, 1]``, the token ids' order). Two shapes are made of them:

- :func:`token_rows` (/pooling ``token_classify``, vLLM's shape): one weight per token,
  relu applied when ``activate``, the first token dropped when it is the BOS id and
  the last when it is the EOS id (other special tokens, UNK included, stay);
- :func:`lexical_pairs` (TEI /embed_sparse, FlagEmbedding's lexical weights): relu,
  the unused ids (CLS, EOS, PAD, UNK) and zero weights dropped, the largest weight per
  token id, as ``[{"index": id, "value": weight}]`` by increasing id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..models.base import LexicalWeights, TokenSeq
from .context import ServingContext, check_window


def token_rows(
    rows: list[np.ndarray], seqs: list[TokenSeq], lexical: LexicalWeights, *, activate: bool
) -> list[np.ndarray]:
    """One float32 weight per kept token, per input (vLLM's ``token_classify``)."""
    out = []
    for row, seq in zip(rows, seqs, strict=True):
        weights = np.asarray(row, dtype=np.float32).reshape(len(seq))
        if activate:
            weights = np.maximum(weights, 0)
        ids = seq.token_ids
        # as vLLM: the BOS check first, then the EOS check on what is left
        if len(ids) and ids[0] == lexical.bos_token_id:
            weights = weights[1:]
        if len(ids) and ids[-1] == lexical.eos_token_id:
            weights = weights[:-1]
        out.append(weights)
    return out


def pairs_of(
    row: np.ndarray, token_ids: np.ndarray, lexical: LexicalWeights
) -> list[dict[str, Any]]:
    """FlagEmbedding's lexical weights of one input as TEI's sparse pairs."""
    weights = np.maximum(np.asarray(row, dtype=np.float32).reshape(len(token_ids)), 0)
    keep = (weights > 0) & ~np.isin(token_ids, lexical.unused_token_ids)
    best: dict[int, float] = {}
    for tid, w in zip(token_ids[keep].tolist(), weights[keep].tolist(), strict=True):
        if w > best.get(tid, 0.0):
            best[tid] = w
    return [{"index": tid, "value": best[tid]} for tid in sorted(best)]


async def lexical_pairs(ctx: ServingContext, seqs: list[TokenSeq]) -> list[list[dict[str, Any]]]:
    """The lexical weights of ``seqs`` (in order), one list of pairs per input."""
    assert ctx.info.lexical is not None
    check_window(ctx, seqs, "embedding generation")  # per-token rows: no windows
    outputs = await ctx.engine.submit([dataclasses.replace(s, per_token="head") for s in seqs])
    return [pairs_of(o, s.token_ids, ctx.info.lexical) for o, s in zip(outputs, seqs, strict=True)]
