"""What every serving family shares: the engine, the input processor, model facts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from ..engine import Engine
from ..errors import InvalidRequest, ModelNotFound, RequestTooLarge
from ..inputs.processor import InputProcessor
from ..metrics import Metrics
from ..models.base import ModelInfo, TokenSeq

T = TypeVar("T")

# Responses bigger than this many floats are JSON-encoded in a worker thread so the
# event loop keeps serving other clients meanwhile.
_OFFLOAD_FLOATS = 50_000

# What each served task enables (API.md "Task -> endpoints"); names as in vLLM's errors.
ENDPOINTS_BY_TASK = {
    "embed": {"Embeddings", "Pooling", "Score", "Tokenize"},
}


@dataclass
class ServingContext:
    """Shared state of the serving families for one served model."""

    engine: Engine
    processor: InputProcessor
    info: ModelInfo
    served_names: tuple[str, ...]
    metrics: Metrics
    max_client_batch_size: int = 4096
    created: int = 0

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())

    def model_name(self, requested: str | None) -> str:
        """The name to echo: the requested one if served, the first one if none given."""
        if not requested:
            return self.served_names[0]
        if requested not in self.served_names:
            raise ModelNotFound(f"The model `{requested}` does not exist.", param="model")
        return requested

    def require(self, api: str) -> None:
        """Raise 400 unless the served task enables ``api`` (e.g. "Embeddings")."""
        if api not in ENDPOINTS_BY_TASK.get(self.info.task, set()):
            raise InvalidRequest(f"The model does not support {api} API")

    def check_count(self, n: int, param: str = "input") -> None:
        """Enforce --max-client-batch-size (413)."""
        if n > self.max_client_batch_size:
            raise RequestTooLarge(
                f"{n} inputs in one request is over the limit of "
                f"{self.max_client_batch_size} (--max-client-batch-size)",
                param=param,
            )


def usage(seqs: list[TokenSeq]) -> dict[str, Any]:
    """The usage block: every token the model saw, special tokens included."""
    n = sum(len(s) for s in seqs)
    return {
        "prompt_tokens": n,
        "total_tokens": n,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU work (tokenization, big encodes) in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def dump_json(body: dict[str, Any], floats: int = 0) -> bytes:
    """orjson with numpy support; large bodies are encoded off the event loop."""
    opts = orjson.OPT_SERIALIZE_NUMPY
    if floats > _OFFLOAD_FLOATS:
        return await off_loop(orjson.dumps, body, option=opts)
    return orjson.dumps(body, option=opts)
