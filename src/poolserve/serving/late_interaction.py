"""Late-interaction (ColBERT) models on /pooling, /v1/embeddings, /score and /rerank.

Promises:
- /pooling (``task`` absent or ``token_embed``) and /v1/embeddings give one
  ``[num_tokens][dim]`` matrix per input: every token the model saw (marker and
  [MASK] augmentation included), projected and L2-normalized per token unless
  ``normalize`` / ``use_activation`` is false. Inputs are documents unless the
  request sends ``input_type: "query"`` (poolserve's field; vLLM marks neither);
- /score and /rerank tokenize ``text_1`` / the query as queries and ``text_2`` / the
  documents as documents (models/late_interaction.py), each distinct text once, and
  score each pair by MaxSim over normalized rows, the document's skiplist tokens
  left out; usage counts the tokens the model saw for both texts of every pair;
- bge-m3 served as token_embed (:func:`scores_by_maxsim`) is scored the same way over
  its colbert vectors (serving/multi_vector.py), both texts as plain prompts (no
  markers, no skiplist), the sum not divided by the query's length (vLLM's score);
- a pooled output (``task: "embed"``, ``dimensions``) is a 400 naming what the model
  lacks; ``input_type`` sent to any other model is a 400 naming what it lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ..models.base import COLBERT, TokenSeq
from ..models.colbert import ColbertRules
from ..models.late_interaction import document_sequence, maxsim, query_sequence, scoring_rows
from ..models.post import finish_embeddings
from ..protocol.embeddings import EmbeddingRequest
from .context import ServingContext, check_priority, resolve_switch, usage
from .multi_vector import multi_vector_rows, serves_multi_vectors
from .prompts import sequences_for

INPUT_TYPES = ("query", "document")


def is_late_interaction(ctx: ServingContext) -> bool:
    """True when the served model is a late-interaction (ColBERT) model."""
    return ctx.info.head == COLBERT


def scores_by_maxsim(ctx: ServingContext) -> bool:
    """True when /score and /rerank answer MaxSim: a ColBERT model, or bge-m3 served
    as token_embed (vLLM scores every token_embed model by late interaction)."""
    return is_late_interaction(ctx) or serves_multi_vectors(ctx)


def _rules(ctx: ServingContext) -> ColbertRules:
    rules = ctx.info.colbert
    if rules is None:
        raise InvalidRequest(
            "MaxSim needs a late-interaction (ColBERT) model's per-token vectors; this "
            "model has no ColBERT projection or query/document markers"
        )
    return rules


def refuse_input_type(ctx: ServingContext, req: Any) -> None:
    """400 for ``input_type`` on a model that is not a late-interaction model."""
    if getattr(req, "input_type", None) is not None and not is_late_interaction(ctx):
        raise InvalidRequest(
            "`input_type` (query / document) applies to late-interaction (ColBERT) models; "
            "this model has no query and document markers",
            param="input_type",
        )


def as_query_or_document(
    rules: ColbertRules, seqs: list[TokenSeq], *, query: bool, cut: bool
) -> list[TokenSeq]:
    """``seqs`` with the layout's marker, length and (queries) augmentation; one longer
    than the layout's length is cut there only when ``cut``, else a 400."""
    mark = query_sequence if query else document_sequence
    return [mark(s, rules, cut=cut) for s in seqs]


async def token_vectors(
    ctx: ServingContext, seqs: list[TokenSeq], *, normalize: bool = True
) -> list[np.ndarray]:
    """One ``[len(seq), dim]`` float32 array per (already marked) sequence, in order."""
    outputs = await ctx.engine.submit(seqs)
    rows = [np.asarray(o, dtype=np.float32) for o in outputs]
    if normalize:
        rows = [finish_embeddings(r, dimensions=None, normalize=True) for r in rows]
    return rows


async def colbert_pooling(
    ctx: ServingContext,
    req: EmbeddingRequest,
    seqs: list[TokenSeq] | None = None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Per-token vectors of a request's inputs (queries or documents), and usage.
    ``seqs``: the inputs already tokenized (the offline API), not yet marked."""
    rules = _rules(ctx)
    task = getattr(req, "task", None)
    if task not in (None, "token_embed"):
        raise InvalidRequest(
            f"task {task!r}: this late-interaction (ColBERT) model has no pooled output; it "
            "gives per-token vectors (token_embed) and MaxSim scores (/score, /rerank)",
            param="task",
        )
    if req.dimensions is not None:
        raise InvalidRequest(
            "`dimensions` does not apply to late-interaction (ColBERT) models: their "
            "per-token vectors have no matryoshka representation",
            param="dimensions",
        )
    kind = getattr(req, "input_type", None) or "document"
    if kind not in INPUT_TYPES:
        raise InvalidRequest(
            f"input_type must be one of {', '.join(INPUT_TYPES)}, not {kind!r}",
            param="input_type",
        )
    normalize = resolve_switch(
        req,
        ("normalize", "use_activation"),
        ctx.info.normalize,
        rejected=("activation", "softmax"),
        where="late-interaction (ColBERT) models",
    )
    check_priority(req)
    if seqs is None:
        seqs = await sequences_for(ctx, req, "embedding generation")
    cut = (
        getattr(req, "truncate_prompt_tokens", None) is not None
        or ctx.processor.rules.auto_truncate
    )
    marked = as_query_or_document(rules, seqs, query=kind == "query", cut=cut)
    rows = await token_vectors(ctx, marked, normalize=normalize)
    return rows, usage(marked)


async def maxsim_pairs(
    ctx: ServingContext,
    firsts: list[str],
    seconds: list[str],
    *,
    truncate: int | None,
    side: str | None,
) -> tuple[np.ndarray, int, list[TokenSeq], list[tuple[int, int]]]:
    """MaxSim of each (query, document) pair (:func:`scores_by_maxsim` models): float32
    scores, the tokens the model saw, the sequences (queries first, then documents;
    ColBERT: marked) and each pair's two indexes into them."""
    queries = list(dict.fromkeys(firsts))
    documents = list(dict.fromkeys(seconds))
    kwargs = {"truncate_prompt_tokens": truncate, "purpose": "score", "truncation_side": side}
    q_seqs = await ctx.tokenizer.texts(queries, **kwargs)
    d_seqs = await ctx.tokenizer.texts(documents, **kwargs)
    if is_late_interaction(ctx):  # ColBERT: markers, projection, skiplist
        rules = _rules(ctx)
        cut = truncate is not None or ctx.processor.rules.auto_truncate
        q_seqs = as_query_or_document(rules, q_seqs, query=True, cut=cut)
        d_seqs = as_query_or_document(rules, d_seqs, query=False, cut=cut)
        # Queries and documents go through the engine as one submission: one batch plan.
        rows = await token_vectors(ctx, [*q_seqs, *d_seqs])
        d_rows = [
            scoring_rows(r, s, rules) for r, s in zip(rows[len(q_seqs) :], d_seqs, strict=True)
        ]
    else:  # bge-m3: plain prompts, colbert vectors with the model's normalization
        assert ctx.info.multi_vectors is not None
        normalize = ctx.info.multi_vectors.normalize
        rows = await multi_vector_rows(ctx, [*q_seqs, *d_seqs], normalize=normalize)
        d_rows = rows[len(q_seqs) :]
    q_rows = rows[: len(q_seqs)]
    q_at = {t: i for i, t in enumerate(queries)}
    d_at = {t: i for i, t in enumerate(documents)}
    pairs = [(q_at[a], d_at[b]) for a, b in zip(firsts, seconds, strict=True)]
    scores = np.array([maxsim(q_rows[i], d_rows[j]) for i, j in pairs], dtype=np.float32)
    seqs = [*q_seqs, *d_seqs]
    index = [(i, len(q_seqs) + j) for i, j in pairs]
    tokens = sum(len(seqs[i]) + len(seqs[j]) for i, j in index)
    return scores, tokens, seqs, index
