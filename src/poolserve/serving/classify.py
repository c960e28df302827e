"""POST /classify, and POST /pooling for sequence-classification models.

Promises: one result per input, in input order; ``probs`` are softmax(logits) for
k >= 2 labels, sigmoid for k == 1 or a multi-label config, raw logits with
``activation=false``; ``label`` is id2label of the argmax (null when unnamed).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ..models.base import TokenSeq
from ..models.post import calibrate, classify_probs
from ..protocol.classify import ClassifyRequest
from ..protocol.embeddings import PoolingRequest
from .context import (
    ServingContext,
    check_priority,
    dump_json,
    resolve_switch,
    token_usage,
    usage,
)
from .prompts import sequences_for
from .tokens import check_pooling_task


def activation_flag(req: Any, *, where: str = "this model", default: bool = True) -> bool:
    """Resolve ``activation`` / ``use_activation`` (else ``default``); 400 on the others.

    ``normalize`` and ``softmax`` belong to embedding and per-token tasks, so naming
    either is a 400 that says so; ``activation`` and ``use_activation`` must agree.
    """
    return resolve_switch(
        req,
        ("activation", "use_activation"),
        default,
        rejected=("normalize", "softmax"),
        where=where,
    )


async def logits_for(
    ctx: ServingContext, req: Any, purpose: str, seqs: list[TokenSeq] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Raw logits ``[n, num_labels]`` of a request's inputs (in order), and usage.

    ``seqs``: the inputs already built (the offline API); else from ``req``.
    """
    if seqs is None:
        seqs = await sequences_for(ctx, req, purpose)
    return await classifier_logits(ctx, seqs), usage(seqs)


async def classifier_logits(ctx: ServingContext, seqs: list[TokenSeq]) -> np.ndarray:
    """The logits ``[n, num_labels]`` of ``seqs``, calibrated by --pooler-config
    logit_mean / logit_sigma when set (every classifier output goes through here)."""
    logits = np.stack(await ctx.engine.submit(seqs)).astype(np.float32, copy=False)
    info = ctx.info
    if info.logit_mean is None and info.logit_sigma is None:
        return logits
    return calibrate(logits, info.logit_mean, info.logit_sigma)


async def create_classify(ctx: ServingContext, req: ClassifyRequest, request_id: str) -> bytes:
    """Answer POST /classify with the response JSON bytes."""
    ctx.require("Classification")
    model = ctx.model_name(req.model)
    check_priority(req)
    activate = activation_flag(req, where="classification", default=ctx.info.activation)
    if req.messages is None and req.input == "":
        raise InvalidRequest("Input cannot be empty for classification", param="input")
    k = ctx.info.num_labels
    if req.messages is None and req.input == []:
        probs, used = np.zeros((0, k), np.float32), token_usage(0)
    else:
        probs, used = await class_probs(ctx, req, activate)
    labels = ctx.info.labels
    data = [
        {"index": i, "label": labels[int(best)], "probs": row, "num_classes": k}
        for i, (best, row) in enumerate(zip(probs.argmax(axis=1), probs, strict=True))
    ]
    body = {
        "id": f"classify-{request_id}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": used,
    }
    return await dump_json(body, floats=probs.size)


async def class_probs(
    ctx: ServingContext, req: Any, activate: bool, seqs: list[TokenSeq] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Class probabilities ``[n, num_labels]`` (raw logits unless ``activate``), and usage."""
    logits, used = await logits_for(ctx, req, "classification", seqs)
    probs = classify_probs(logits, multi_label=ctx.info.multi_label) if activate else logits
    return probs, used


async def pooled_classifier_output(
    ctx: ServingContext, req: PoolingRequest, seqs: list[TokenSeq] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """/pooling for a classifier: the probability vector per input (after activation).

    The activation is the served task's: a cross-encoder served for ``score`` uses its
    score activation (sentence-transformers'), ``classify`` (or ``task: "classify"``)
    uses the classification one; ``activation=false`` gives the raw logits.
    """
    check_pooling_task(ctx, req.task, "classify")
    activate = activation_flag(req, where="classification models", default=ctx.info.activation)
    check_priority(req)
    logits, used = await logits_for(ctx, req, "embedding generation", seqs)
    if not activate:
        return logits, used
    score_activation = ctx.info.score_activation
    if ctx.info.task == "score" and req.task is None and score_activation is not None:
        return score_activation(logits), used
    return classify_probs(logits, multi_label=ctx.info.multi_label), used
