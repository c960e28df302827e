"""Hugging Face text-embeddings-inference (TEI) answers: /embed, /embed_all, /predict,
TEI's /rerank, /similarity, /info. (/tokenize and /decode: :mod:`.tei_tokens`.)

Promises (docs/tei.md has the details and where poolserve differs from TEI):
- each route answers TEI's response shape: bare JSON lists, f32 values;
- the work goes through the same serving functions as the OpenAI/vLLM routes, so
  /embed gives /v1/embeddings' vectors, /predict /classify's probabilities, TEI's
  /rerank the Jina /rerank's scores for the same inputs;
- a route the served model does not do is TEI's 424 ``Backend`` error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import __version__
from ..models.base import TokenSeq
from ..models.post import cosine_rows
from ..protocol.embeddings import EmbeddingRequest, PoolingRequest
from ..protocol.score import ScoreRequest
from ..protocol.tei import (
    TeiEmbedAllRequest,
    TeiEmbedRequest,
    TeiPredictRequest,
    TeiRerankRequest,
    TeiSimilarityParameters,
    TeiSimilarityRequest,
)
from .classify import class_probs
from .context import ServingContext, dump_json, model_kind
from .embeddings import embed as embed_vectors
from .lexical import lexical_pairs
from .score import score_pairs, top_order
from .tei_inputs import (
    TeiError,
    check_batch,
    empty_error,
    max_input_length,
    not_served,
    pair_sequences,
    sequences,
    split_inputs,
    tei_lengths,
    wants_truncation,
)
from .tokens import per_token_output

_NOT_EMBEDDING = "Model is not an embedding model"


def _require_embedding(ctx: ServingContext) -> None:
    if not ctx.enables("Embeddings"):
        raise not_served(_NOT_EMBEDDING)


def _no_nan(scores: np.ndarray) -> None:
    # TEI refuses to sort NaN scores; so does poolserve, with TEI's answer.
    if np.isnan(scores).any():
        raise TeiError("score is NaN", "Backend")


async def _vectors(
    ctx: ServingContext, seqs: list[TokenSeq], *, normalize: bool, dimensions: int | None
) -> np.ndarray:
    """Pooled vectors [n, dim] of ``seqs`` through the one embedding path."""
    req = EmbeddingRequest(normalize=normalize, dimensions=dimensions)
    vectors, _ = await embed_vectors(ctx, req, ctx.served_names[0], seqs=seqs)
    return vectors


async def embed(ctx: ServingContext, req: TeiEmbedRequest) -> bytes:
    """POST /embed: ``[[float, ...], ...]``, one row per input (a single input too)."""
    batch, inputs = split_inputs(req.inputs)
    if batch:
        check_batch(ctx, len(inputs))
    _require_embedding(ctx)  # after the batch checks, in TEI's order
    dimensions = req.dimensions
    if dimensions is not None:
        if dimensions == 0:
            raise TeiError("Input validation error: `dimensions` should be positive")
        if dimensions > ctx.info.dimension:
            raise TeiError(
                "Input validation error: `dimensions` should be smaller than the maximum "
                "embedding dimension."
            )
        if dimensions == ctx.info.dimension:
            dimensions = None  # the full width: nothing to cut, any model may ask it
    seqs = await sequences(
        ctx, inputs, truncate=req.truncate, side=req.side(), prompt_name=req.prompt_name
    )
    vectors = await _vectors(ctx, seqs, normalize=req.normalize, dimensions=dimensions)
    return await dump_json(vectors, floats=vectors.size)


async def embed_sparse(ctx: ServingContext, req: TeiEmbedAllRequest) -> bytes:
    """POST /embed_sparse: ``[[{"index": token_id, "value": weight}, ...], ...]``, the
    non-zero SPLADE weights of each input by vocabulary id, or bge-m3's lexical weights
    (serving/lexical.py); any other model: TEI's 424 naming what it lacks."""
    batch, inputs = split_inputs(req.inputs)
    if batch:
        check_batch(ctx, len(inputs))
    problem = ctx.info.sparse_problem()
    if problem is not None:
        raise not_served(problem)
    seqs = await sequences(
        ctx, inputs, truncate=req.truncate, side=req.side(), prompt_name=req.prompt_name
    )
    if ctx.info.lexical is not None:  # bge-m3
        rows = await lexical_pairs(ctx, seqs)
    else:  # SPLADE: the non-zero entries of its vocabulary vector
        vectors = await _vectors(ctx, seqs, normalize=False, dimensions=None)
        rows = []
        for row in vectors:
            (ids,) = np.nonzero(row)
            rows.append([{"index": int(i), "value": float(row[i])} for i in ids])
    return await dump_json(rows, floats=sum(len(r) for r in rows))


async def embed_all(ctx: ServingContext, req: TeiEmbedAllRequest) -> bytes:
    """POST /embed_all: ``[[[float, ...] per token] per input]``: the last hidden
    states of every token, special tokens included, not normalized (as TEI)."""
    batch, inputs = split_inputs(req.inputs)
    if batch:
        check_batch(ctx, len(inputs))
    if not ctx.enables("Embeddings") or "token_embed" not in ctx.info.token_tasks:
        raise not_served(_NOT_EMBEDDING)
    seqs = await sequences(
        ctx, inputs, truncate=req.truncate, side=req.side(), prompt_name=req.prompt_name
    )
    # bge-m3: the hidden states as TEI gives them for its XLM-R, not the colbert vectors
    raw = PoolingRequest(task="token_embed", normalize=False)
    rows, _ = await per_token_output(ctx, raw, seqs, hidden_states=True)
    return await dump_json(rows, floats=sum(r.size for r in rows))


def _label(ctx: ServingContext, i: int) -> str:
    # TEI needs id2label; transformers names an unnamed label LABEL_i.
    label = ctx.info.labels[i]
    return label if label is not None else f"LABEL_{i}"


async def predict(ctx: ServingContext, req: TeiPredictRequest) -> bytes:
    """POST /predict: ``[{score, label}, ...]`` best first for one input, a list of
    those for a batch. Scores: softmax over the labels (sigmoid for one label, or a
    multi-label config), the logits with ``raw_scores``."""
    batch, pairs = req.sequences()
    if batch:
        check_batch(ctx, len(pairs))
    if not ctx.enables("Classification"):
        raise not_served("Model is not a classifier model")
    seqs = await pair_sequences(ctx, pairs, truncate=req.truncate, side=req.side())
    probs, _ = await class_probs(ctx, None, not req.raw_scores, seqs)
    _no_nan(probs)
    labels = [_label(ctx, i) for i in range(probs.shape[1])]
    answers = []
    for row in probs:
        order = np.argsort(-row, kind="stable")
        answers.append([{"score": row[j], "label": labels[j]} for j in order])
    return await dump_json(answers if batch else answers[0], floats=probs.size)


async def rerank(ctx: ServingContext, req: TeiRerankRequest) -> bytes:
    """TEI's POST /rerank: ``[{index, text?, score}, ...]`` by descending score.

    A cross-encoder scores each (query, text) pair (its score activation, a sigmoid for
    most, unless ``raw_scores``); an embedding model answers cosine similarities, as
    poolserve's Jina-style /rerank does.
    """
    if not req.texts:
        raise TeiError("`texts` cannot be empty", "Empty")
    if not ctx.enables("Rerank"):
        raise not_served("model is not a re-ranker model")
    check_batch(ctx, len(req.texts), "texts")
    if not req.query and any(not t for t in req.texts):
        raise empty_error()
    cross = ctx.info.is_cross_encoder
    scoring = ScoreRequest(
        truncate_prompt_tokens=-1 if wants_truncation(ctx, req.truncate) else None,
        truncation_side=req.side(),
        activation=False if cross and req.raw_scores else None,
    )
    with tei_lengths():
        scored = await score_pairs(ctx, scoring, [req.query], req.texts, params=("query", "texts"))
    scores = scored.scores
    _no_nan(scores)
    ranks: list[dict[str, Any]] = []
    for i in top_order(scores, None):
        item: dict[str, Any] = {"index": i}
        if req.return_text:
            item["text"] = req.texts[i]
        item["score"] = scores[i]
        ranks.append(item)
    return await dump_json(ranks, floats=len(ranks))


async def similarity(ctx: ServingContext, req: TeiSimilarityRequest) -> bytes:
    """POST /similarity: ``[float, ...]``, the cosine similarity of the source
    sentence with each sentence, in order."""
    sentences = req.inputs.sentences
    if not sentences:
        raise TeiError("`inputs.sentences` cannot be empty", "Empty")
    check_batch(ctx, len(sentences) + 1)  # TEI counts the source sentence too
    _require_embedding(ctx)
    params = req.parameters or TeiSimilarityParameters()
    texts: list[str | list[int]] = [req.inputs.source_sentence, *sentences]
    seqs = await sequences(
        ctx, texts, truncate=params.truncate, side=params.side(), prompt_name=params.prompt_name
    )
    vectors = await _vectors(ctx, seqs, normalize=False, dimensions=None)
    source = np.repeat(vectors[:1], len(sentences), axis=0)
    return await dump_json(cosine_rows(source, vectors[1:]), floats=len(sentences))


# TEI's pooling names (its Pool enum) for poolserve's sentence-transformers modes.
_POOLING_NAMES = {"lasttoken": "last_token"}


def _model_type(ctx: ServingContext) -> dict[str, Any]:
    kind = model_kind(ctx.info)
    if kind in ("classifier", "cross-encoder"):
        id2label = {str(i): _label(ctx, i) for i in range(ctx.info.num_labels)}
        label2id = {label: int(i) for i, label in id2label.items()}
        key = "classifier" if kind == "classifier" else "reranker"
        return {key: {"id2label": id2label, "label2id": label2id}}
    if kind == "tokens":  # a reward model: no TEI kind; its rows are per token
        return {"embedding": {"pooling": "none"}}
    if kind == "sparse":  # TEI names SPLADE pooling "splade"
        return {"embedding": {"pooling": "splade"}}
    pooling = "+".join(_POOLING_NAMES.get(m, m) for m in ctx.info.pooling)
    return {"embedding": {"pooling": pooling}}


def info(ctx: ServingContext) -> dict[str, Any]:
    """GET /info: TEI's ``Info`` object, filled with this server's values."""
    engine = ctx.engine
    name = ctx.served_names[0]
    return {
        "model_id": name,
        "model_sha": None,
        "model_dtype": ctx.info.dtype,
        "served_model_name": name,
        "model_type": _model_type(ctx),
        "max_concurrent_requests": engine.max_queued_requests,
        "max_input_length": max_input_length(ctx),
        "max_batch_tokens": getattr(engine, "max_num_batched_tokens", None),
        "max_batch_requests": getattr(engine, "max_num_seqs", None),
        "max_client_batch_size": ctx.max_client_batch_size,
        "auto_truncate": ctx.processor.rules.auto_truncate,
        "tokenization_workers": 1,  # one tokenizer thread per front-end process
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }
