"""The offline API's results, shaped as vLLM's (``vllm.outputs``), so scripts written for
``vllm.LLM`` read them unchanged: ``out.outputs.embedding`` / ``.probs`` / ``.score`` /
``.data``, ``out.prompt_token_ids``, ``out.request_id``, ``out.finished``.

Field names and types follow vLLM 0.9–0.33 (read from its ``vllm/outputs.py``):
``embedding`` and ``probs`` are lists of floats, ``score`` a float, ``data`` a
``torch.Tensor``; ``num_cached_tokens`` is always 0 here (no prefix cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

O = TypeVar("O")  # noqa: E741


@dataclass
class PoolingOutput:
    """The pooled output of one prompt: ``data`` is a ``torch.Tensor`` ([width], or
    [num_tokens, width] for per-token tasks)."""

    data: Any


@dataclass
class EmbeddingOutput:
    """One embedding (a list of floats)."""

    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class ClassificationOutput:
    """One prompt's class probabilities (raw logits when the activation is off)."""

    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ScoringOutput:
    """One pair's score."""

    score: float


@dataclass
class PoolingRequestOutput(Generic[O]):
    """One prompt's (or pair's) result: ``outputs`` plus the ids the model saw."""

    request_id: str
    outputs: O
    prompt_token_ids: list[int]
    num_cached_tokens: int = 0
    finished: bool = True


class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    """:meth:`poolserve.LLM.embed`'s result per prompt."""


class ClassificationRequestOutput(PoolingRequestOutput[ClassificationOutput]):
    """:meth:`poolserve.LLM.classify`'s result per prompt."""


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    """:meth:`poolserve.LLM.score`'s result per pair."""
