"""The server's admission counts: requests admitted, body bytes they hold, and open
connections.

One process keeps them in plain ints; several front-end processes share one pair in
shared memory (:class:`SharedCounts`), so ``--max-queued-requests``,
``--max-inflight-bytes`` and ``--max-connections`` bound the whole server, not each process.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

REQUESTS, BYTES, CONNECTIONS = 0, 1, 2


class Counts:
    """Three counters with an atomic bounded add (one process: the event loop's thread)."""

    def __init__(self) -> None:
        self._values = [0, 0, 0]

    def get(self, index: int) -> int:
        return self._values[index]

    def try_add(self, index: int, amount: int, limit: int | None) -> bool:
        """Add ``amount`` unless the total would pass ``limit``; True when added."""
        if limit is not None and self._values[index] + amount > limit:
            return False
        self._values[index] += amount
        return True

    def add(self, index: int, amount: int) -> None:
        self._values[index] += amount


class SharedCounts(Counts):
    """The same counts in shared memory, for front-end processes started by one parent.

    Create it in the parent and hand it to the children at their start (it pickles
    only through multiprocessing's process creation).
    """

    def __init__(self, context: Any = None) -> None:
        ctx = context or multiprocessing.get_context("spawn")
        self._shared = ctx.Array("q", 3, lock=True)

    def get(self, index: int) -> int:
        return int(self._shared[index])

    def try_add(self, index: int, amount: int, limit: int | None) -> bool:
        with self._shared.get_lock():
            if limit is not None and self._shared[index] + amount > limit:
                return False
            self._shared[index] += amount
            return True

    def add(self, index: int, amount: int) -> None:
        with self._shared.get_lock():
            self._shared[index] += amount
