"""POST /score and POST /rerank: text pairs scored by a cross-encoder or by cosine.

Promises:
- pairing follows :func:`poolserve.inputs.pairs.pair_up` (1:1, 1:N, N:N; vLLM's
  messages); one score per ``text_2`` / document, in order (rerank: sorted);
- a cross-encoder scores each pair as one tokenized text pair; score =
  sentence-transformers' activation of the logit (``activation=false``: the logit);
- an embedding model embeds each distinct text of the request once and scores by
  cosine similarity; an activation switch is a 400 there;
- a late-interaction (ColBERT) model scores by MaxSim of the texts' per-token vectors
  (serving/late_interaction.py), ``text_1`` as queries, ``text_2`` as documents; so
  does bge-m3 served as token_embed (--pooler-config), over its colbert vectors;
- every pair goes through the engine as its own sequence, so a large rerank is split
  into batches by the token budget like any other traffic;
- ``usage`` sums the pair token counts (cross-encoder: the tokenized pair; embedding
  model: both texts' tokens), every scored document included.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from ..errors import InvalidRequest
from ..inputs.pairs import as_list, pair_up
from ..models.base import TokenSeq
from ..models.post import cosine_rows
from ..protocol.score import RerankRequest, ScoreRequest
from .classify import activation_flag, classifier_logits
from .context import ServingContext, check_priority, dump_json, token_usage
from .embeddings import embed_sequences
from .late_interaction import maxsim_pairs, scores_by_maxsim

_PURPOSE = "score"


class Scored(NamedTuple):
    """Scores of pairs, in pair order, with what the model saw for them."""

    scores: np.ndarray  # float32 [pairs]
    tokens: int  # tokens the model saw for the pairs (usage)
    seqs: list[TokenSeq]  # what was tokenized: the pairs, or each distinct text
    rows: list[tuple[int, int]] | None  # embedding model: each pair's rows in seqs

    def prompt_ids(self) -> list[np.ndarray]:
        """Per pair: the tokenized pair (cross-encoder), or both texts' ids one after
        the other (embedding model) — vLLM's offline ``prompt_token_ids`` of a score.
        Built on demand: the HTTP answers never need them."""
        if self.rows is None:
            return [s.token_ids for s in self.seqs]
        seqs = self.seqs
        return [np.concatenate((seqs[i].token_ids, seqs[j].token_ids)) for i, j in self.rows]


_SWITCHES = ("activation", "use_activation", "normalize", "softmax")


async def score_pairs(
    ctx: ServingContext,
    req: Any,
    texts_1: list[str],
    texts_2: list[str],
    *,
    params: tuple[str, str] = ("text_1", "text_2"),
) -> Scored:
    """Scores [len(pairs)] float32 of the paired texts, the tokens the model saw, and the
    token ids of each pair.

    ``req`` supplies ``truncate_prompt_tokens`` and the activation switches.
    """
    for name in ("instruction", "chat_template_kwargs"):
        if getattr(req, name, None) is not None:
            raise InvalidRequest(
                f"`{name}` applies to rerankers with a score chat template; this model has none",
                param=name,
            )
    ctx.check_count(len(texts_2), param=params[1])  # one pair per texts_2 item
    per_query = getattr(req, "max_tokens_per_query", 0)
    per_doc = getattr(req, "max_tokens_per_doc", 0)
    if per_query or per_doc:  # each given text once, before a 1:N query is repeated
        proc = ctx.processor
        texts_1 = await ctx.tokenizer.call(
            proc.clip_texts, texts_1, per_query, "max_tokens_per_query"
        )
        texts_2 = await ctx.tokenizer.call(proc.clip_texts, texts_2, per_doc, "max_tokens_per_doc")
    firsts, seconds = pair_up(texts_1, texts_2, params=params)
    truncate = req.truncate_prompt_tokens
    side = getattr(req, "truncation_side", None)
    if ctx.info.is_cross_encoder:
        activate = activation_flag(req, where="scoring", default=ctx.info.activation)
        seqs = await ctx.tokenizer.call(
            ctx.processor.from_pairs,
            firsts,
            seconds,
            truncate_prompt_tokens=truncate,
            purpose=_PURPOSE,
            truncation_side=side,
        )
        logits = await classifier_logits(ctx, seqs)
        activation = ctx.info.score_activation
        if activate and activation is not None:
            logits = activation(logits)
        return Scored(logits[:, 0], sum(len(s) for s in seqs), seqs, None)
    for name in _SWITCHES:
        if getattr(req, name, None) is not None:
            raise InvalidRequest(
                f"`{name}` does not apply to embedding models: their scores are cosine "
                "similarities (late-interaction models: MaxSim)",
                param=name,
            )
    if scores_by_maxsim(ctx):  # per-token vectors: MaxSim
        scores, tokens, seqs, rows = await maxsim_pairs(
            ctx, firsts, seconds, truncate=truncate, side=side
        )
        return Scored(scores, tokens, seqs, rows)
    # Each distinct text once: a 1:N request embeds text_1 a single time.
    distinct = list(dict.fromkeys([*firsts, *seconds]))
    seqs = await ctx.tokenizer.texts(
        distinct, truncate_prompt_tokens=truncate, purpose=_PURPOSE, truncation_side=side
    )
    # The vectors /v1/embeddings gives by default (windows combined when chunked).
    info = ctx.info
    vectors = await embed_sequences(
        ctx, seqs, dimensions=info.default_dimensions, normalize=info.normalize
    )
    row = {text: i for i, text in enumerate(distinct)}
    left = [row[t] for t in firsts]
    right = [row[t] for t in seconds]
    scores = cosine_rows(vectors[left], vectors[right])
    rows = list(zip(left, right, strict=True))
    tokens = sum(len(seqs[i]) + len(seqs[j]) for i, j in rows)
    return Scored(scores, tokens, seqs, rows)


def _one_of(req: ScoreRequest, names: tuple[str, ...]) -> list[str]:
    given = [(name, getattr(req, name)) for name in names if getattr(req, name) is not None]
    if len(given) > 1:
        raise InvalidRequest(
            "give only one of " + ", ".join(f"`{n}`" for n in names), param=given[1][0]
        )
    if not given:
        raise InvalidRequest(f"`{names[0]}` is required", param=names[0])
    return as_list(given[0][1])


async def create_score(ctx: ServingContext, req: ScoreRequest, request_id: str) -> bytes:
    """Answer POST /score with the response JSON bytes."""
    ctx.require("Score")
    model = ctx.model_name(req.model)
    check_priority(req)
    texts_1 = _one_of(req, ("text_1", "queries", "data_1"))
    texts_2 = _one_of(req, ("text_2", "documents", "items", "data_2"))
    scores, tokens, *_ = await score_pairs(ctx, req, texts_1, texts_2)
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores.tolist())]
    body = {
        "id": f"score-{request_id}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": token_usage(tokens),
    }
    return await dump_json(body, floats=len(data))


def top_order(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indexes by descending score (ties keep input order), cut to ``top_n``.

    ``top_n`` None, <= 0 or >= the count means all.
    """
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    if top_n is not None and 0 < top_n < len(order):
        return order[:top_n]
    return order


async def create_rerank(ctx: ServingContext, req: RerankRequest, request_id: str) -> bytes:
    """Answer POST /rerank with the response JSON bytes."""
    ctx.require("Rerank")
    model = ctx.model_name(req.model)
    check_priority(req)
    documents = req.texts()
    scores, tokens, *_ = await score_pairs(
        ctx, req, [req.query], documents, params=("query", "documents")
    )
    values = scores.tolist()
    results: list[dict[str, Any]] = []
    for i in top_order(scores, req.top_n):
        item: dict[str, Any] = {"index": i}
        if req.return_documents:
            item["document"] = {"text": documents[i]}
        item["relevance_score"] = values[i]
        results.append(item)
    body = {
        "id": f"rerank-{request_id}",
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    }
    return await dump_json(body, floats=len(results))
