"""bge-m3's colbert vectors (``colbert_linear.pt``) on /pooling, /v1/embeddings, /score.

What they are (models/bge_m3.py, :class:`~poolserve.models.base.MultiVectors`):
``colbert_linear(hidden)`` of every token but a leading BOS, L2-normalized per token.

Promises:
- :func:`multi_vector_rows` gives one ``[num_tokens - 1, dim]`` float32 array per
  sequence (``num_tokens`` when the first token is not the config's BOS id), in order;
- :func:`multi_vector_pooling` answers /pooling ``task: "token_embed"`` (and
  /v1/embeddings when the server serves that task): the rows above, normalized unless
  ``normalize`` / ``use_activation`` is false (default: --pooler-config's), cut to
  ``dimensions`` only where the model is matryoshka (bge-m3 is not: vLLM's 400);
  usage counts every token the model saw, BOS included;
- a bge-m3 folder without ``colbert_linear.pt`` asked for them is a 400 naming the file;
- :func:`serves_multi_vectors` is True when --pooler-config task token_embed made them
  the served task: /score and /rerank then score by MaxSim over them
  (serving/late_interaction.py), as vLLM scores a token_embed model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ..models.base import MultiVectors, TokenSeq
from ..models.post import finish_embeddings
from .context import (
    ServingContext,
    check_dimensions,
    check_priority,
    check_window,
    resolve_switch,
    usage,
)
from .prompts import sequences_for

COLBERT = "colbert"  # TokenSeq.per_token: the backend's colbert_linear rows
TOKEN_EMBED = "token_embed"


def serves_multi_vectors(ctx: ServingContext) -> bool:
    """True when the served task is bge-m3's colbert vectors (--pooler-config task
    token_embed): /v1/embeddings answers them and /score scores by MaxSim."""
    return ctx.info.multi_vectors is not None and ctx.info.pooling_task == TOKEN_EMBED


def _vectors(ctx: ServingContext) -> MultiVectors:
    vectors = ctx.info.multi_vectors
    if vectors is None:
        raise InvalidRequest(
            "task 'token_embed' on bge-m3 gives its colbert vectors; this model folder has "
            "no colbert_linear.pt (the colbert head)",
            param="task",
        )
    return vectors


async def multi_vector_rows(
    ctx: ServingContext, seqs: list[TokenSeq], *, normalize: bool, dimensions: int | None = None
) -> list[np.ndarray]:
    """The colbert vectors of ``seqs`` (one array per sequence, in order)."""
    bos = _vectors(ctx).bos_token_id
    outputs = await ctx.engine.submit([dataclasses.replace(s, per_token=COLBERT) for s in seqs])
    rows: list[np.ndarray] = []
    for out, seq in zip(outputs, seqs, strict=True):
        row = np.asarray(out, dtype=np.float32)
        # vLLM's filter for this task drops only a leading BOS ("m3 only filters the bos
        # for colbert vectors"); FlagEmbedding's [:, 1:] drops the first token alike.
        if len(seq.token_ids) and bos is not None and int(seq.token_ids[0]) == bos:
            row = row[1:]
        if normalize or dimensions is not None:
            row = finish_embeddings(row, dimensions=dimensions, normalize=normalize)
        rows.append(row)
    return rows


async def multi_vector_pooling(
    ctx: ServingContext, req: Any, seqs: list[TokenSeq] | None, model: str | None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """/pooling ``token_embed`` (or /v1/embeddings under that served task) on bge-m3:
    the colbert vectors per input, and usage. ``seqs``: inputs already tokenized."""
    vectors = _vectors(ctx)
    dimensions = check_dimensions(ctx, req.dimensions, model or ctx.served_names[0])
    normalize = resolve_switch(
        req,
        ("normalize", "use_activation"),
        vectors.normalize,
        rejected=("activation", "softmax"),
        where=TOKEN_EMBED,
    )
    check_priority(req)
    if seqs is None:
        seqs = await sequences_for(ctx, req, "embedding generation")
    check_window(ctx, seqs, "embedding generation")
    rows = await multi_vector_rows(ctx, seqs, normalize=normalize, dimensions=dimensions)
    return rows, usage(seqs)
