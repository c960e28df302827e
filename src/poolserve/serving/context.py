"""What every serving family shares: the engine, the input processor, model facts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from ..engine import EngineHandle
from ..errors import InvalidRequest, ModelNotFound, RequestTooLarge
from ..inputs.processor import InputProcessor, context_error
from ..metrics import Metrics
from ..models.base import CLASSIFIER, COLBERT, SPARSE, TOKENS, ModelInfo, TokenSeq
from .tokenizer_thread import TokenizerThread

T = TypeVar("T")

# Responses bigger than this many floats are JSON-encoded in a worker thread so the
# event loop keeps serving other clients meanwhile.
_OFFLOAD_FLOATS = 50_000

_EMBEDDING_APIS = frozenset({"Embeddings", "Pooling", "Score", "Rerank", "Tokenize"})
_CROSS_ENCODER_APIS = frozenset({"Score", "Rerank", "Classification", "Pooling", "Tokenize"})
_CLASSIFIER_APIS = frozenset({"Classification", "Pooling", "Tokenize"})
_TOKEN_APIS = frozenset({"Pooling", "Tokenize"})

# What each served task enables (API.md "Task -> endpoints"), by (task, model kind);
# API names as in vLLM's "The model does not support X API". Kinds (see model_kind):
# "embedding" (pooled vectors; /score and /rerank by cosine similarity),
# "cross-encoder" (a sequence classifier with one label), "classifier" (2+ labels),
# "tokens" (per-token rows: a reward model), "sparse" (SPLADE weights by vocabulary id),
# "colbert" (late interaction: per-token vectors; /score and /rerank by MaxSim).
ENDPOINTS_BY_TASK: dict[tuple[str, str], frozenset[str]] = {
    ("embed", "embedding"): _EMBEDDING_APIS,
    ("score", "embedding"): _EMBEDDING_APIS,  # an embedding model: as embed
    ("score", "cross-encoder"): _CROSS_ENCODER_APIS,
    ("classify", "cross-encoder"): _CROSS_ENCODER_APIS,  # /score when num_labels == 1
    ("classify", "classifier"): _CLASSIFIER_APIS,
    ("reward", "tokens"): _TOKEN_APIS,
    ("embed", "sparse"): frozenset({"Embeddings", "Pooling", "Tokenize"}),
    # per-token vectors (/v1/embeddings too, as vLLM serves a token_embed model); MaxSim
    ("embed", "colbert"): _EMBEDDING_APIS,
}


def model_kind(info: ModelInfo) -> str:
    """``embedding``, ``cross-encoder`` (one label), ``classifier`` (2+ labels), ``tokens``,
    ``sparse`` or ``colbert``."""
    if info.head == TOKENS:
        return "tokens"
    if info.head == SPARSE:
        return "sparse"
    if info.head == COLBERT:
        return "colbert"
    if info.head != CLASSIFIER:
        return "embedding"
    return "cross-encoder" if info.num_labels == 1 else "classifier"


@dataclass
class ServingContext:
    """Shared state of the serving families for one served model."""

    engine: EngineHandle
    processor: InputProcessor
    info: ModelInfo
    served_names: tuple[str, ...]
    metrics: Metrics
    max_client_batch_size: int = 4096
    created: int = 0
    tokenizer: TokenizerThread = field(init=False)

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())
        # Every request's tokenization goes through this one thread (see its module).
        self.tokenizer = TokenizerThread(self.processor)

    def model_name(self, requested: str | None) -> str:
        """The name to echo: the requested one if served, the first one if none given."""
        if not requested:
            return self.served_names[0]
        if requested not in self.served_names:
            raise ModelNotFound(f"The model `{requested}` does not exist.", param="model")
        return requested

    def enables(self, api: str) -> bool:
        """True when the served task enables ``api`` (e.g. "Embeddings"); "Sparse" (no
        vLLM API: what TEI's /embed_sparse is routed by) when the model gives sparse
        weights."""
        if api == "Sparse":
            return self.info.sparse_problem() is None
        return api in ENDPOINTS_BY_TASK.get((self.info.task, model_kind(self.info)), ())

    def require(self, api: str) -> None:
        """Raise 400 unless the served task enables ``api``."""
        if not self.enables(api):
            raise InvalidRequest(f"The model does not support {api} API")

    def check_count(self, n: int, param: str = "input") -> None:
        """Enforce --max-client-batch-size (413)."""
        if n > self.max_client_batch_size:
            raise RequestTooLarge(
                f"{n} inputs in one request is over the limit of "
                f"{self.max_client_batch_size} (--max-client-batch-size)",
                param=param,
            )


def check_dimensions(ctx: ServingContext, d: int | None, model: str) -> int | None:
    """A request's matryoshka ``dimensions`` checked (400s as vLLM words them), else the
    server's default (--pooler-config dimensions), else None (the full width)."""
    if d is None:
        return ctx.info.default_dimensions
    problem = ctx.info.dimensions_problem(d, model)
    if problem is not None:
        raise InvalidRequest(problem, param="dimensions")
    return d


def check_window(ctx: ServingContext, seqs: list[TokenSeq], purpose: str) -> None:
    """400 for an input longer than the model's window: with chunked processing only
    pooled embeddings are combined over windows, per-token outputs are not."""
    if not ctx.processor.rules.chunked:
        return  # the input processor already held every input to the window
    limit = ctx.info.max_model_len
    longest = max((len(s) for s in seqs), default=0)
    if longest > limit:
        raise context_error(limit, longest, purpose)


def check_priority(req: Any) -> None:
    """400 unless the request's ``priority`` is 0 (no priority scheduler here)."""
    if req.priority != 0:
        raise InvalidRequest(
            "priority scheduling is not enabled on this server; send priority 0",
            param="priority",
        )


def usage(seqs: list[TokenSeq]) -> dict[str, Any]:
    """The usage block: every token the model saw, special tokens included."""
    return token_usage(sum(len(s) for s in seqs))


def token_usage(n: int) -> dict[str, Any]:
    """The usage block for ``n`` prompt tokens."""
    return {
        "prompt_tokens": n,
        "total_tokens": n,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU work (tokenization, big encodes) in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def dump_json(body: Any, floats: int = 0) -> bytes:
    """orjson of any JSON value, numpy arrays included; large bodies (over
    _OFFLOAD_FLOATS floats) are encoded off the event loop."""
    opts = orjson.OPT_SERIALIZE_NUMPY
    if floats > _OFFLOAD_FLOATS:
        return await off_loop(orjson.dumps, body, option=opts)
    return orjson.dumps(body, option=opts)


def resolve_switch(
    req: Any, names: tuple[str, str], default: bool, *, rejected: tuple[str, ...], where: str
) -> bool:
    """The value of an activation switch known by two names (e.g. ``normalize`` and
    ``use_activation``), else ``default``.

    The two names must agree when both are sent; a switch in ``rejected`` does not
    apply to ``where`` and is a 400 naming it.
    """
    first, second = names
    for name in rejected:
        if getattr(req, name, None) is not None:
            raise InvalidRequest(f"`{name}` does not apply to {where}; use `{first}`", param=name)
    a, b = getattr(req, first), getattr(req, second)
    if a is not None and b is not None and a != b:
        raise InvalidRequest(f"`{first}` and `{second}` disagree", param=first)
    for value in (a, b):
        if value is not None:
            return bool(value)
    return default
