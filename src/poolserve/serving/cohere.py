"""POST /v2/embed and /v1/embed: Cohere's embed API over the one embedding path.

Steps: validate -> texts with the prompt ``input_type`` picks, truncated as
``truncate`` / ``max_tokens`` say -> :func:`.embeddings.embed` -> each asked
``embedding_types`` encoding. docs/cohere.md has the rules and where they come from
(vLLM's ``/v2/embed``, Cohere's API reference, sentence-transformers' prompt names).
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import InvalidRequest, PoolserveError
from ..models.base import TokenSeq
from ..protocol.cohere import COHERE_INPUT_TYPES, CohereEmbedRequest
from ..protocol.embeddings import EmbeddingRequest
from .context import ServingContext, dump_json
from .embeddings import embed

# After a prompt named exactly like the input_type (vLLM's lookup), the
# sentence-transformers prompt names tried in order: those ST's encode_query /
# encode_document use. A Cohere type with no prompt embeds as the model does by default.
_PROMPT_NAMES: dict[str, tuple[str, ...]] = {
    "search_query": ("query",),
    "search_document": ("document", "passage", "corpus"),
    "classification": (),
    "clustering": (),
    "image": (),
}
assert set(_PROMPT_NAMES) == set(COHERE_INPUT_TYPES)

# The error params of the shared steps, renamed to the Cohere fields that caused them.
_PARAMS = {
    "input": "texts",
    "prompt_name": "input_type",
    "dimensions": "output_dimension",
    "truncate_prompt_tokens": "max_tokens",
}

# Cohere's embedding types in the order its SDK lists them (vLLM's order for its four).
_TYPE_ORDER = ("float", "int8", "uint8", "binary", "ubinary", "base64")
_BINARY_TYPES = ("binary", "ubinary")


def prompt_name_for(input_type: str | None, prompts: Collection[str]) -> str | None:
    """The model prompt ``input_type`` selects, or None for the model's default input
    (its default prompt if it names one, else the text as is).

    A prompt named ``input_type`` wins (as in vLLM); else Cohere's types map to the
    sentence-transformers names in ``_PROMPT_NAMES``. Any other value is a 400.
    """
    if input_type is None:
        return None
    if input_type in prompts:
        return input_type
    aliases = _PROMPT_NAMES.get(input_type)
    if aliases is None:
        supported = ", ".join(sorted(set(COHERE_INPUT_TYPES) | set(prompts)))
        raise InvalidRequest(
            f"Unsupported input_type {input_type!r}. Supported values: {supported}",
            param="input_type",
        )
    return next((name for name in aliases if name in prompts), None)


def _texts(ctx: ServingContext, req: CohereEmbedRequest) -> list[str]:
    """The request's texts: exactly one input field, non-empty, and text only."""
    given = [name for name in ("texts", "images", "inputs") if getattr(req, name) is not None]
    if len(given) > 1:
        raise InvalidRequest(
            f"give exactly one of `texts`, `images` or `inputs`, not {' and '.join(given)}",
            param=given[1],
        )
    if given and given[0] != "texts":
        raise InvalidRequest(
            f"`{given[0]}` is not supported: the served model embeds text only; send `texts`",
            param=given[0],
        )
    if not req.texts:
        raise InvalidRequest("`texts` must hold at least one text", param="texts")
    ctx.check_count(len(req.texts), param="texts")
    return req.texts


def _truncation(ctx: ServingContext, req: CohereEmbedRequest) -> tuple[int | None, str | None]:
    """(truncate_prompt_tokens, truncation_side) for ``truncate`` and ``max_tokens``,
    as vLLM resolves them: END keeps the first tokens, START the last; each cuts to
    ``max_tokens``, else to the model's limit (-1); NONE cuts nothing."""
    mode = req.truncate or "END"  # Cohere's default
    k = req.max_tokens
    if k is not None and k < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, got {k}", param="max_tokens")
    if mode == "NONE":
        return None, None
    limit = ctx.processor.rules.max_input_len
    if k is not None and limit is not None and k > limit:
        raise InvalidRequest(
            f"max_tokens ({k}) is greater than the model's maximum input length ({limit})",
            param="max_tokens",
        )
    return (-1 if k is None else k), ("left" if mode == "START" else "right")


@contextmanager
def _cohere_params() -> Iterator[None]:
    """Errors of the shared steps name the Cohere field (``texts``, not ``input``)."""
    try:
        yield
    except PoolserveError as exc:
        if exc.param in _PARAMS:
            exc.param = _PARAMS[exc.param]
        raise


def int8_embeddings(x: np.ndarray) -> np.ndarray:
    """int8 values: ``rint(127 * x / ||x||)`` per row, in float64 (a zero row stays 0).

    Neither vLLM nor Cohere publishes an int8 rule (Cohere's are trained in); this one
    needs no calibration, does not depend on the rest of the batch, keeps dot-product
    order for unit vectors and never clips (each |x_i| <= ||x||).
    """
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x64, axis=-1, keepdims=True)
    unit = np.divide(x64, norms, out=np.zeros_like(x64), where=norms > 0)
    return np.clip(np.rint(unit * 127.0), -127, 127).astype(np.int8)


def encode_types(x: np.ndarray, types: Collection[str]) -> dict[str, Any]:
    """``x`` ([n, dim] float32) in each Cohere embedding type asked, keyed by type.

    binary/ubinary as vLLM: bit i is ``x_i >= 0``, packed 8 a byte, most significant
    first (``dim`` must be a multiple of 8); binary is ubinary - 128. uint8 is int8 +
    128 likewise. base64: each row's little-endian float32 bytes.
    """
    out: dict[str, Any] = {}
    int8 = int8_embeddings(x) if "int8" in types or "uint8" in types else None
    ubinary = np.packbits(x >= 0, axis=-1) if any(t in types for t in _BINARY_TYPES) else None
    for t in _TYPE_ORDER:
        if t not in types:
            continue
        if t == "float":
            out[t] = x
        elif t == "int8":
            out[t] = int8
        elif t == "uint8":
            assert int8 is not None
            out[t] = (int8.astype(np.int16) + 128).astype(np.uint8)
        elif t == "ubinary":
            out[t] = ubinary
        elif t == "binary":
            assert ubinary is not None
            out[t] = (ubinary.astype(np.int16) - 128).astype(np.int8)
        else:
            rows = np.ascontiguousarray(x, dtype="<f4")
            out[t] = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    return out


async def create_embed(
    ctx: ServingContext, req: CohereEmbedRequest, request_id: str, api_version: int = 2
) -> bytes:
    """Answer Cohere embed (``api_version`` 2: /v2/embed; 1: /v1/embed): the JSON bytes.

    v2 always answers ``embeddings_by_type``; v1 answers ``embeddings_floats`` (a bare
    list of float rows) when ``embedding_types`` is not sent, as Cohere's v1 does.
    """
    ctx.require("Embeddings")
    model = ctx.model_name(req.model)
    texts = _texts(ctx, req)
    types = set(req.embedding_types or ("float",))  # vLLM: empty or absent -> float
    with _cohere_params():
        prompt_name = prompt_name_for(req.input_type, dict(ctx.processor.rules.prompts))
        k, side = _truncation(ctx, req)
        seqs = await ctx.tokenizer.texts(
            texts,
            add_special_tokens=True,
            truncate_prompt_tokens=k,
            purpose="embedding generation",
            prompt_name=prompt_name,
            truncation_side=side,
            auto_truncate=False if k is None else None,  # NONE: never cut, whatever the server
        )
        if req.max_tokens is not None and k is None:  # NONE: refuse, never cut
            _refuse_over(seqs, req.max_tokens)
        options = EmbeddingRequest(
            model=req.model, dimensions=req.output_dimension, priority=req.priority
        )
        vectors, used = await embed(ctx, options, model, seqs=seqs)
    dim = vectors.shape[1]
    if dim % 8 and types & set(_BINARY_TYPES):
        raise InvalidRequest(
            "Embedding dimension must be a multiple of 8 for binary embedding types, "
            f"but got {dim}.",
            param="embedding_types",
        )
    meta = {
        "api_version": {"version": str(api_version)},
        "billed_units": {"input_tokens": used["prompt_tokens"], "image_tokens": 0},
    }
    head = {"id": f"embd-{request_id}"}
    if api_version == 1 and req.embedding_types is None:
        body = {**head, "embeddings": vectors, "texts": texts, "meta": meta}
        return await dump_json({**body, "response_type": "embeddings_floats"}, vectors.size)
    embeddings = encode_types(vectors, types)
    body = {**head, "embeddings": embeddings, "texts": texts, "meta": meta}
    floats = int(vectors.size) * len(embeddings)
    return await dump_json({**body, "response_type": "embeddings_by_type"}, floats)


def _refuse_over(seqs: list[TokenSeq], max_tokens: int) -> None:
    """truncate=NONE with max_tokens: a 400 for an input over max_tokens (vLLM's words)."""
    for seq in seqs:
        n = len(seq)
        if n > max_tokens:
            raise InvalidRequest(
                f"Input of {n} tokens exceeds max_tokens={max_tokens} with truncate=NONE. "
                "Set truncate to END or START to allow truncation.",
                param="max_tokens",
            )
