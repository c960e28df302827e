"""POST /v1/embeddings, and POST /pooling (classifiers: see :mod:`.classify`)."""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from ..models.base import CLASSIFIER, TOKENS, TokenSeq
from ..models.post import combine_windows, finish_embeddings
from ..protocol.embeddings import EmbeddingRequest, PoolingRequest
from .classify import pooled_classifier_output
from .context import (
    ServingContext,
    check_dimensions,
    check_priority,
    dump_json,
    off_loop,
    resolve_switch,
    usage,
)
from .late_interaction import colbert_pooling, is_late_interaction, refuse_input_type
from .multi_vector import multi_vector_pooling, serves_multi_vectors
from .prompts import sequences_for
from .tokens import (
    PER_TOKEN_TASKS,
    check_pooling_task,
    per_token_output,
    pooled_token_output,
    refuse_dimensions,
)


def _normalize_flag(ctx: ServingContext, req: EmbeddingRequest) -> bool:
    """Resolve the activation switches that apply to embeddings; 400 on the others."""
    return resolve_switch(
        req,
        ("normalize", "use_activation"),
        ctx.info.normalize,
        rejected=("activation", "softmax"),
        where="embedding models",
    )


async def embed(
    ctx: ServingContext,
    req: EmbeddingRequest,
    model: str,
    purpose: str = "embedding generation",
    seqs: list[TokenSeq] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed a request's inputs: [n, dim] float32 vectors (in input order) and usage.

    The one embedding path: the HTTP handlers and the offline API both call it.
    ``seqs``: the inputs already built (the offline API); else from ``req``.
    """
    if is_late_interaction(ctx):
        raise InvalidRequest(
            "this late-interaction (ColBERT) model has no pooled embedding: it gives "
            "per-token vectors (/pooling, task token_embed) and MaxSim scores (/score, /rerank)"
        )
    refuse_input_type(ctx, req)
    dimensions = check_dimensions(ctx, req.dimensions, model)
    normalize = _normalize_flag(ctx, req)
    check_priority(req)
    if seqs is None:
        seqs = await sequences_for(ctx, req, purpose)
    vectors = await embed_sequences(ctx, seqs, dimensions=dimensions, normalize=normalize)
    return vectors, usage(seqs)


async def embed_sequences(
    ctx: ServingContext, seqs: list[TokenSeq], *, dimensions: int | None, normalize: bool
) -> np.ndarray:
    """Finished ``[n, dim]`` float32 vectors of ``seqs`` (in order).

    With chunked processing (--pooler-config enable_chunked_processing) an input longer
    than the model's window is cut into consecutive windows of max_model_len tokens
    (its token ids as tokenized, special tokens where the tokenizer put them), each
    window embedded and finished (dimensions, normalization) like an input of its own,
    and the windows combined by :func:`~poolserve.models.post.combine_windows`, as vLLM
    does (docs/long-inputs.md).
    """
    window = ctx.info.max_model_len
    if not ctx.processor.rules.chunked or all(len(s) <= window for s in seqs):
        outputs = await ctx.engine.submit(seqs)
        return finish_embeddings(np.stack(outputs), dimensions=dimensions, normalize=normalize)
    windows, owners = split_windows(seqs, window)
    outputs = await ctx.engine.submit(windows)
    finished = finish_embeddings(np.stack(outputs), dimensions=dimensions, normalize=normalize)
    weights = np.array([len(w) for w in windows])
    return combine_windows(finished, owners, weights, len(seqs), normalize=normalize)


def split_windows(seqs: list[TokenSeq], window: int) -> tuple[list[TokenSeq], np.ndarray]:
    """Each sequence cut into consecutive pieces of at most ``window`` tokens, and the
    index of the sequence each piece comes from. Only the first piece keeps the
    sequence's prompt (prompt_len)."""
    pieces: list[TokenSeq] = []
    owners: list[int] = []
    for i, seq in enumerate(seqs):
        if len(seq) <= window:
            pieces.append(seq)
            owners.append(i)
            continue
        types = seq.token_type_ids
        for start in range(0, len(seq), window):
            end = start + window
            pieces.append(
                TokenSeq(
                    seq.token_ids[start:end],
                    types[start:end] if types is not None else None,
                    min(seq.prompt_len, window) if start == 0 else 0,
                )
            )
            owners.append(i)
    return pieces, np.array(owners, dtype=np.intp)


# --- compact outputs: vLLM's base64 / bytes / bytes_only with embed_dtype and endianness --
# (vllm/utils/serial_utils.py tensor2binary and vllm/entrypoints/pooling/utils.py; see
# docs/compact-outputs.md). Each request's values are converted once, with numpy only.

_BYTE_ORDER = {"native": "=", "little": "<", "big": ">"}
# float8: (mantissa bits, exponent bias)
_FP8 = {"fp8_e4m3": (3, 7), "fp8_e5m2": (2, 15)}
# Outputs of more values than this are encoded in a worker thread (as dump_json does).
_OFFLOAD_VALUES = 50_000


def _bfloat16_bits(u: np.ndarray) -> np.ndarray:
    """bfloat16 bits of float32 bits ``u`` as torch's CPU conversion gives them: round to
    nearest even; every NaN becomes 0xFFFF."""
    bits = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    bits[(u & 0x7FFFFFFF) > 0x7F800000] = 0xFFFF
    return bits


def _fp8_bits(u: np.ndarray, embed_dtype: str) -> np.ndarray:
    """float8 bits of float32 bits ``u`` as torch converts them: round to nearest even,
    sign kept, NaN -> 0x7F; e4m3fn (no infinity) saturates at +-448 (0x7E), e5m2
    overflows to infinity (0x7C)."""
    mant, bias = _FP8[embed_dtype]
    shift = 23 - mant
    mag = u & 0x7FFFFFFF
    # Normal results: rebias the exponent, round the dropped mantissa bits to even.
    rebias = (((bias - 127) << 23) + (1 << (shift - 1)) - 1) & 0xFFFFFFFF
    out = (np.minimum(mag, 0x7F800000) + rebias + ((mag >> shift) & 1)) >> shift
    # Below the smallest normal, 2**(1 - bias): a whole number of the subnormal step.
    min_normal = (128 - bias) << 23
    tiny = np.minimum(mag, min_normal).view(np.float32) * np.float32(2.0 ** (bias - 1 + mant))
    out = np.where(mag < min_normal, np.rint(tiny).astype(np.uint32), out)
    out = np.minimum(out, 0x7E if embed_dtype == "fp8_e4m3" else 0x7C)
    out[mag > 0x7F800000] = 0x7F
    return (out | ((u >> 24) & 0x80)).astype(np.uint8)


def to_embed_dtype(x: np.ndarray, embed_dtype: str, endianness: str) -> np.ndarray:
    """``x`` (float32) as ``embed_dtype`` values in the byte order asked, the way vLLM's
    ``tensor2binary`` writes them: the result's bytes, in order, are the wire format."""
    order = _BYTE_ORDER[endianness]
    if embed_dtype == "float32":
        return x.astype(order + "f4", copy=False)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if embed_dtype == "float16":
        with np.errstate(over="ignore"):  # beyond float16's range: infinity, as torch
            half = x.astype(np.float16)
        nan = np.isnan(x)
        if nan.any():  # torch's NaN: quiet, top payload bits kept (numpy's differs)
            u = x[nan].view(np.uint32)
            half.view(np.uint16)[nan] = ((u >> 16) & 0x8000) | 0x7E00 | ((u >> 13) & 0x3FF)
        return half.astype(order + "f2", copy=False)
    u = x.view(np.uint32)
    if embed_dtype == "bfloat16":
        return _bfloat16_bits(u).astype(order + "u2", copy=False)
    return _fp8_bits(u, embed_dtype)


def _packed(
    vectors: Any, embed_dtype: str, endianness: str
) -> tuple[memoryview, list[Any], list[tuple[int, int]]]:
    """Every item's values converted and concatenated (row-major, item order) as raw
    bytes; each item's shape and (start, end) byte span. ``vectors``: a [n, ...] array or
    a list of arrays (per-token outputs, one [tokens, width] array per input)."""
    if isinstance(vectors, np.ndarray):
        flat, shapes = np.ravel(vectors), [vectors.shape[1:]] * len(vectors)
    else:
        shapes = [np.shape(v) for v in vectors]
        flat = np.concatenate([np.ravel(v) for v in vectors]) if shapes else np.empty(0)
    values = to_embed_dtype(flat, embed_dtype, endianness)
    spans, start = [], 0
    for shape in shapes:
        end = start + math.prod(shape) * values.itemsize
        spans.append((start, end))
        start = end
    return values.view(np.uint8).data, shapes, spans


def _encode(vectors: Any, req: EmbeddingRequest) -> list[Any]:
    """The JSON ``embedding`` / ``data`` values: float rows, or one base64 string each."""
    if req.encoding_format == "float":  # embed_dtype and endianness do not apply
        return list(vectors)
    raw, _, spans = _packed(vectors, req.embed_dtype, req.endianness)
    return [base64.b64encode(raw[a:b]).decode("ascii") for a, b in spans]


class OctetBody(bytes):
    """A ``bytes`` / ``bytes_only`` answer: sent as application/octet-stream, with vLLM's
    ``metadata`` header when set (``bytes``; ``bytes_only`` sends none)."""

    metadata: str | None = None


def _octets(
    vectors: Any, req: EmbeddingRequest, head: dict[str, Any], used: dict[str, Any]
) -> OctetBody:
    raw, shapes, spans = _packed(vectors, req.embed_dtype, req.endianness)
    body = OctetBody(raw)
    if req.encoding_format == "bytes":
        data = [
            {
                "index": i,
                "embed_dtype": req.embed_dtype,
                "endianness": req.endianness,
                "start": start,
                "end": end,
                "shape": list(shape),
            }
            for i, ((start, end), shape) in enumerate(zip(spans, shapes, strict=True))
        ]
        usage = {k: used[k] for k in ("prompt_tokens", "total_tokens")}
        # json.dumps' default spacing and ASCII escapes, as vLLM sends it.
        body.metadata = json.dumps({**head, "data": data, "usage": usage})
    return body


async def _answer(
    req: EmbeddingRequest, vectors: Any, used: dict[str, Any], rid: str, model: str, obj: str
) -> bytes:
    """The response body: JSON (float, base64), or an :class:`OctetBody` (bytes formats)."""
    head = {"id": rid, "created": int(time.time()), "model": model}
    values = int(vectors.size) if isinstance(vectors, np.ndarray) else sum(map(np.size, vectors))
    big = values > _OFFLOAD_VALUES
    if req.encoding_format in ("bytes", "bytes_only"):
        return (
            await off_loop(_octets, vectors, req, head, used)
            if big
            else _octets(vectors, req, head, used)
        )
    encoded = await off_loop(_encode, vectors, req) if big else _encode(vectors, req)
    key = "embedding" if obj == "embedding" else "data"
    data = [{"index": i, "object": obj, key: v} for i, v in enumerate(encoded)]
    body = {"id": rid, "object": "list", "created": head["created"], "model": model}
    return await dump_json({**body, "data": data, "usage": used}, floats=values)


async def create_embeddings(ctx: ServingContext, req: EmbeddingRequest, request_id: str) -> bytes:
    """Answer POST /v1/embeddings: the response JSON bytes, or an :class:`OctetBody`."""
    ctx.require("Embeddings")
    model = ctx.model_name(req.model)
    if is_late_interaction(ctx):  # vLLM answers a token_embed model with token matrices
        rows, used = await colbert_pooling(ctx, req)
        return await _answer(req, rows, used, f"embd-{request_id}", model, "embedding")
    if serves_multi_vectors(ctx):  # bge-m3 served as token_embed: its colbert vectors
        refuse_input_type(ctx, req)
        rows, used = await multi_vector_pooling(ctx, req, None, model)
        return await _answer(req, rows, used, f"embd-{request_id}", model, "embedding")
    vectors, used = await embed(ctx, req, model)
    return await _answer(req, vectors, used, f"embd-{request_id}", model, "embedding")


async def create_pooling(ctx: ServingContext, req: PoolingRequest, request_id: str) -> bytes:
    """Answer POST /pooling: the served task's pooled output per input (JSON bytes, or an
    :class:`OctetBody` for the bytes formats)."""
    ctx.require("Pooling")
    model = ctx.model_name(req.model)
    vectors, used = await pooled(ctx, req, model)
    return await _answer(req, vectors, used, f"pool-{request_id}", model, "pooling")


async def pooled(
    ctx: ServingContext, req: PoolingRequest, model: str, seqs: list[TokenSeq] | None = None
) -> tuple[Any, dict[str, Any]]:
    """What /pooling gives per input for ``req.task`` (default: the served task's): an
    array ``[n, width]``, or a list of ``[num_tokens, width]`` arrays for per-token
    tasks; and usage. ``seqs``: the inputs already built (the offline API). A request
    naming no task gets ``ModelInfo.pooling_task`` when the server set one."""
    if is_late_interaction(ctx):
        return await colbert_pooling(ctx, req, seqs)
    refuse_input_type(ctx, req)
    if req.task is None and ctx.info.pooling_task is not None:
        req = req.model_copy(update={"task": ctx.info.pooling_task})
    if ctx.info.head == TOKENS:
        refuse_dimensions(req, "token_classify")
        return await pooled_token_output(ctx, req, seqs)
    if req.task in PER_TOKEN_TASKS:
        return await per_token_output(ctx, req, seqs, model)
    if ctx.info.head == CLASSIFIER:
        refuse_dimensions(req, "classify")
        return await pooled_classifier_output(ctx, req, seqs)
    check_pooling_task(ctx, req.task, "embed")
    return await embed(ctx, req, model, seqs=seqs)
