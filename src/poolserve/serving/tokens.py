"""Per-token outputs on POST /pooling: one ``[num_tokens][width]`` array per input.

Promises:
- a reward model's rows are its per-token head outputs for every real token (ALL), or
  only at the step-tag positions (STEP); ``softmax`` / ``use_activation`` (default: the
  served pooler's ``softmax``, off unless --override-pooler-config turns it on) applies
  a softmax over each row; the other switches are a 400;
- ``task: "token_embed"`` (models listing it in ``ModelInfo.token_tasks``) gives every
  token's last hidden state, L2-normalized unless ``normalize`` is false (a ColBERT
  model: its projected token vectors, serving/late_interaction.py; bge-m3: its colbert
  vectors, serving/multi_vector.py, unless the caller asks for hidden states);
- ``task: "token_classify"`` on a decoder classifier gives its head on every token,
  with the classification activation per row unless ``activation`` is false; on
  bge-m3 its lexical weights, one per token (serving/lexical.py);
- ``task: "token_classify"`` on an embedding model without such a head is a 400 naming
  what it lacks (ModelInfo.sparse_problem, TEI's /embed_sparse rule);
- any other ``task`` the model does not serve is a 400 listing the ones it does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ..models.base import CLASSIFIER, EMBEDDING, TokenSeq
from ..models.post import classify_probs, finish_embeddings, softmax
from ..protocol.embeddings import PoolingRequest
from .context import (
    ServingContext,
    check_dimensions,
    check_priority,
    check_window,
    resolve_switch,
    usage,
)
from .late_interaction import colbert_pooling, is_late_interaction
from .lexical import token_rows
from .multi_vector import multi_vector_pooling
from .prompts import sequences_for

PER_TOKEN_TASKS = ("token_embed", "token_classify")
# What a model must have for a per-token task (the 400 names it).
_LACKS = {
    "token_embed": "per-token vectors (token_embed: an embedding or late-interaction model)",
    "token_classify": "per-token classifier head (token_classify)",
}


def refuse_dimensions(req: PoolingRequest, task: str) -> None:
    """400 for ``dimensions`` on a task without matryoshka outputs (vLLM's words)."""
    if req.dimensions is not None:
        raise InvalidRequest(
            f"Task {task!r} only supports ['use_activation'] parameters, does not support "
            "['dimensions'] parameters",
            param="dimensions",
        )


def check_pooling_task(ctx: ServingContext, task: str | None, served: str) -> None:
    """400 unless ``task`` is None, the served pooled task, or one of the model's
    per-token tasks."""
    supported = (served, *(t for t in ctx.info.token_tasks if t != served))
    if task is not None and task not in supported:
        sparse = ctx.info.sparse_problem() if task == "token_classify" else None
        lacks = sparse if sparse and ctx.info.head == EMBEDDING else None
        if lacks is None and task in _LACKS:
            lacks = f"it has no {_LACKS[task]}"
        raise InvalidRequest(
            f"task {task!r} is not supported by this model on /pooling "
            f"(supported: {', '.join(supported)})" + (f": {lacks}" if lacks else ""),
            param="task",
        )


async def pooled_token_output(
    ctx: ServingContext, req: PoolingRequest, seqs: list[TokenSeq] | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Per-token rows ``[num_tokens, width]`` per input (in order), and usage."""
    check_pooling_task(ctx, req.task, "token_classify")
    activate = resolve_switch(
        req,
        ("softmax", "use_activation"),
        ctx.info.activation,
        rejected=("normalize", "activation"),
        where="per-token (reward) models",
    )
    check_priority(req)
    if seqs is None:
        seqs = await sequences_for(ctx, req, "embedding generation")
    outputs = await ctx.engine.submit(seqs)
    rows = [np.asarray(o, dtype=np.float32) for o in outputs]
    if activate:
        rows = [softmax(r) if r.size else r for r in rows]
    return rows, usage(seqs)


async def per_token_output(
    ctx: ServingContext,
    req: PoolingRequest,
    seqs: list[TokenSeq] | None = None,
    model: str | None = None,
    *,
    hidden_states: bool = False,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``token_embed`` / ``token_classify`` rows per input (in order), and usage.
    ``token_embed`` rows are cut to ``dimensions`` (matryoshka) before normalizing.
    ``hidden_states``: bge-m3's ``token_embed`` gives the encoder's hidden states rather
    than its colbert vectors (TEI /embed_all, as TEI answers any XLM-R)."""
    task = req.task
    assert task in PER_TOKEN_TASKS
    if is_late_interaction(ctx) and task == "token_embed":
        # a ColBERT model's token vectors: marked inputs, its projection (TEI /embed_all)
        return await colbert_pooling(ctx, req, seqs)
    if task == "token_embed" and ctx.info.lexical is not None and not hidden_states:
        # bge-m3: vLLM's BgeM3EmbeddingModel answers token_embed with colbert vectors
        return await multi_vector_pooling(ctx, req, seqs, model)
    check_pooling_task(ctx, task, "classify" if ctx.info.head == CLASSIFIER else "embed")
    check_priority(req)
    dimensions = None
    if task == "token_embed":
        dimensions = check_dimensions(ctx, req.dimensions, model or ctx.served_names[0])
    else:
        refuse_dimensions(req, task)
    if task == "token_embed":
        activate = resolve_switch(
            req,
            ("normalize", "use_activation"),
            True,
            rejected=("activation", "softmax"),
            where="token_embed",
        )
    else:
        activate = resolve_switch(
            req,
            ("activation", "use_activation"),
            ctx.info.activation,
            rejected=("normalize", "softmax"),
            where="token_classify",
        )
    mode = "hidden" if task == "token_embed" else "head"
    if seqs is None:
        seqs = await sequences_for(ctx, req, "embedding generation")
    check_window(ctx, seqs, "embedding generation")
    outputs = await ctx.engine.submit([dataclasses.replace(s, per_token=mode) for s in seqs])
    rows = [np.asarray(o, dtype=np.float32) for o in outputs]
    if task == "token_embed" and (activate or dimensions is not None):
        rows = [finish_embeddings(r, dimensions=dimensions, normalize=activate) for r in rows]
    elif task == "token_classify" and ctx.info.lexical is not None:  # bge-m3: relu, no probs
        rows = token_rows(rows, seqs, ctx.info.lexical, activate=activate)
    elif activate:
        rows = [classify_probs(r, multi_label=ctx.info.multi_label) for r in rows]
    return rows, usage(seqs)
