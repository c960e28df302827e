"""The offline Python API: the same engine and rules as the server, without HTTP.

from poolserve.offline import PoolingModel
with PoolingModel() as model:          # the packaged all-MiniLM-L6-v2
    vectors = model.embed(["hello", "world"])   # np.ndarray [2, 384]
    scores = model.score("hello", ["hi", "bye"])  # cosine here; a cross-encoder's scores
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

import numpy as np

from .config import Config, EngineConfig, ModelConfig
from .inputs.pairs import as_list
from .protocol.classify import ClassifyRequest
from .protocol.embeddings import EmbeddingRequest
from .protocol.score import ScoreRequest
from .runtime import build_context
from .serving.classify import activation_flag, class_probs
from .serving.embeddings import embed
from .serving.score import score_pairs

T = TypeVar("T")


def _items(inputs: str | Sequence[str] | Sequence[Sequence[int]]) -> Any:
    """A request's ``input`` from texts or token-id lists (a lone string is one text)."""
    if isinstance(inputs, str):
        return [inputs]
    return [x if isinstance(x, str) else list(x) for x in inputs]


class PoolingModel:
    """Load a model once; embed texts or token ids from plain Python.

    Runs the engine on a private event loop in a background thread, so calls from
    many threads share batches exactly as HTTP clients do.
    """

    def __init__(self, model: str | None = None, **options: Any) -> None:
        model_fields = set(ModelConfig.__dataclass_fields__)
        engine_fields = set(EngineConfig.__dataclass_fields__)
        unknown = set(options) - model_fields - engine_fields
        if unknown:
            raise TypeError(f"unknown options: {sorted(unknown)}")
        # A per-request cap protects a server from one client; here the caller owns it all.
        options.setdefault("max_client_batch_size", 1 << 30)
        config = Config(
            model=ModelConfig(
                model=model, **{k: v for k, v in options.items() if k in model_fields}
            ),
            engine=EngineConfig(**{k: v for k, v in options.items() if k in engine_fields}),
        )
        self.ctx = build_context(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="poolserve-offline"
        )
        self._thread.start()
        self.call(self.ctx.engine.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the model's event loop (where the engine lives); its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def dimension(self) -> int:
        """Length of the vectors :meth:`embed` returns (before ``dimensions``)."""
        return self.ctx.info.dimension

    def embed(
        self,
        inputs: str | Sequence[str] | Sequence[Sequence[int]],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        truncate_prompt_tokens: int | None = None,
        truncation_side: Literal["left", "right"] | None = None,
    ) -> np.ndarray:
        """Embed texts (or token-id lists): float32 [n, dim], rows in input order.

        A text longer than the model's window is embedded in windows and combined when
        the model was loaded with ``override_pooler_config={"enable_chunked_processing":
        True}`` (docs/long-inputs.md). Raises the same :mod:`poolserve.errors` the
        server maps to 4xx answers.
        """
        self.ctx.require("Embeddings")
        req = EmbeddingRequest(
            input=_items(inputs),
            normalize=normalize,
            dimensions=dimensions,
            truncate_prompt_tokens=truncate_prompt_tokens,
            truncation_side=truncation_side,
        )
        vectors, _ = self.call(embed(self.ctx, req, self.ctx.served_names[0]))
        return vectors

    @property
    def labels(self) -> list[str] | None:
        """A classifier's label names by class index (None: not a classifier, or unnamed)."""
        labels = self.ctx.info.labels
        if not labels or any(label is None for label in labels):
            return None
        return [str(label) for label in labels]

    def classify(
        self,
        inputs: str | Sequence[str] | Sequence[Sequence[int]],
        *,
        activation: bool | None = None,
        truncate_prompt_tokens: int | None = None,
        truncation_side: Literal["left", "right"] | None = None,
    ) -> np.ndarray:
        """Class probabilities as POST /classify gives them: float32 [n, num_labels], rows
        in input order (``activation=False``: the raw logits)."""
        self.ctx.require("Classification")
        req = ClassifyRequest(
            input=_items(inputs),
            activation=activation,
            truncate_prompt_tokens=truncate_prompt_tokens,
            truncation_side=truncation_side,
        )
        activate = activation_flag(req, where="classification", default=self.ctx.info.activation)
        probs, _ = self.call(class_probs(self.ctx, req, activate))
        return probs

    def score(
        self,
        text_1: str | Sequence[str],
        text_2: str | Sequence[str],
        *,
        activation: bool | None = None,
        truncate_prompt_tokens: int | None = None,
    ) -> np.ndarray:
        """Scores of the pairs, as POST /score: float32 [one per text_2], in order.

        A cross-encoder scores each pair (``activation=False``: raw logits); an
        embedding model gives cosine similarities. Pairing: 1:1, 1:N or N:N.
        """
        self.ctx.require("Score")
        req = ScoreRequest(activation=activation, truncate_prompt_tokens=truncate_prompt_tokens)
        pairs = score_pairs(self.ctx, req, as_list(text_1), as_list(text_2))
        return self.call(pairs).scores

    def close(self) -> None:
        """Stop the engine and its thread."""
        if self._loop.is_running():
            self.call(self.ctx.engine.stop(grace=5))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> PoolingModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
