"""Per-request accounting shared by the HTTP gateway and the engine, without coupling them.

The gateway puts a :class:`RequestStats` in :data:`current_request` before it runs a
request; :meth:`poolserve.engine.Engine.submit` adds what the engine did for it
(sequences, tokens, queue and compute time); the gateway logs it in one line. Code
that runs outside a request (the offline API) leaves the variable unset.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestStats:
    """What the engine did for one request (sums over its engine submissions)."""

    sequences: int = 0
    tokens: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0

    def add(self, sequences: int, tokens: int, queue: float, compute: float) -> None:
        """Account one engine submission."""
        self.sequences += sequences
        self.tokens += tokens
        self.queue_seconds += queue
        self.compute_seconds += compute


current_request: ContextVar[RequestStats | None] = ContextVar(
    "poolserve_current_request", default=None
)
