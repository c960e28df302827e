"""Several processes, one engine each: the engine's side of the channel and the front
end's stand-in for it.

:func:`serve_engine` answers SUBMIT frames from any number of front-end connections
with the local :class:`Engine`; :class:`RemoteEngine` is what a front-end process's
serving context holds instead of an Engine: the same ``submit`` promises (errors come
back as the same poolserve error classes), spread over one or more engine processes
(data parallelism) by the fewest tokens in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence

import numpy as np

from ..accounting import RequestStats, current_request
from ..errors import EngineUnavailable
from ..models.base import TokenSeq
from . import channel
from .engine import Engine, check_request

log = logging.getLogger("poolserve.engine")


async def serve_engine(engine: Engine, path: str) -> asyncio.AbstractServer:
    """Serve ``engine`` on the Unix socket ``path`` (started; close it to stop)."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: dict[int, asyncio.Task[None]] = {}

        async def run(rid: int, seqs: list[TokenSeq]) -> None:
            # The engine accounts queue and compute time into this task's RequestStats;
            # they travel back so the front end's access log shows them.
            stats = RequestStats()
            current_request.set(stats)
            try:
                outputs = await engine.submit(seqs)
            except asyncio.CancelledError:
                return
            except Exception as exc:  # answered to that request, in its error class
                writer.writelines(channel.error_frame(rid, exc))
            else:
                writer.writelines(
                    channel.result_frame(rid, outputs, stats.queue_seconds, stats.compute_seconds)
                )
            finally:
                tasks.pop(rid, None)

        try:
            while True:
                kind, rid, body = await channel.read_frame(reader)
                if kind == channel.SUBMIT:
                    task = asyncio.create_task(run(rid, channel.read_submit(body)))
                    tasks[rid] = task
                elif kind == channel.CANCEL and rid in tasks:
                    tasks[rid].cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front end went away: drop its work below
        finally:
            for task in list(tasks.values()):
                task.cancel()
            writer.close()

    return await asyncio.start_unix_server(connection, path=path)


class _Link:
    """One connection to one engine process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[tuple[list[np.ndarray], float, float]]] = {}
        self.tokens = 0  # tokens sent and not answered: the balancing measure
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self.closing = False

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(self.path)
        self.task = asyncio.create_task(self._read(), name=f"poolserve-link-{self.path}")

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while True:
                kind, rid, body = await channel.read_frame(self.reader)
                future = self.pending.pop(rid, None)
                if future is None or future.done():
                    continue
                if kind == channel.RESULT:
                    future.set_result(channel.read_result(body))
                elif kind == channel.ERROR:
                    future.set_exception(channel.read_error(body))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self.error = f"the engine process went away ({exc.__class__.__name__})"
            if not self.closing:
                log.error("engine link %s: %s", self.path, self.error)
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(EngineUnavailable(self.error or "engine link closed"))
            self.pending.clear()

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def close(self) -> None:
        self.closing = True
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


class RemoteEngine:
    """A front end's engine: ``submit`` runs on the engine processes at ``paths``.

    Same promises as :meth:`Engine.submit`: outputs in order; RequestTooLarge,
    Overloaded, EngineUnavailable and InternalError as the engine raises them;
    cancelling the caller drops its queued sequences in the engine process.
    """

    def __init__(
        self,
        paths: Sequence[str],
        *,
        max_num_batched_tokens: int = 8192,
        max_num_seqs: int = 256,
        max_queued_requests: int = 1024,
        max_request_tokens: int | None = None,
    ) -> None:
        self.links = [_Link(p) for p in paths]
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.max_queued_requests = max_queued_requests
        self.max_request_tokens = max_request_tokens
        self._ids = itertools.count(1)
        self._admitted = 0
        self._accepting = False

    async def start(self) -> None:
        """Connect to every engine process."""
        for link in self.links:
            await link.open()
        self._accepting = True

    async def stop(self, grace: float | None = None) -> None:
        """Stop admitting; wait (up to ``grace`` s) for answers in flight; disconnect."""
        self._accepting = False
        deadline = None if grace is None else time.monotonic() + grace
        while self._admitted and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        for link in self.links:
            await link.close()

    @property
    def alive(self) -> bool:
        return bool(self.links) and all(link.alive for link in self.links)

    @property
    def queued_sequences(self) -> int:
        return 0  # the engine processes hold the queue

    @property
    def admitted_requests(self) -> int:
        return self._admitted

    def check_tokens(self, tokens: int) -> None:
        """Raise RequestTooLarge when one request's ``tokens`` are over the limit."""
        check_request(tokens, self.max_request_tokens)

    async def submit(self, seqs: Sequence[TokenSeq]) -> list[np.ndarray]:
        """Run ``seqs`` on the least loaded engine process; one output per sequence."""
        if not self._accepting or not self.alive:
            dead = next((link.error for link in self.links if link.error), None)
            raise EngineUnavailable(dead or "the engine is not running")
        tokens = sum(len(s) for s in seqs)
        check_request(tokens, self.max_request_tokens, self._admitted, self.max_queued_requests)
        if not seqs:
            return []
        link = min(self.links, key=lambda lk: lk.tokens)
        rid = next(self._ids)
        future: asyncio.Future[tuple[list[np.ndarray], float, float]] = (
            asyncio.get_running_loop().create_future()
        )
        link.pending[rid] = future
        assert link.writer is not None
        link.writer.writelines(channel.submit_frame(rid, seqs))
        link.tokens += tokens
        self._admitted += 1
        try:
            outputs, queue_s, compute_s = await future
        except asyncio.CancelledError:
            if link.pending.pop(rid, None) is not None and link.alive and link.writer:
                link.writer.writelines(channel.control_frame(channel.CANCEL, rid))
            raise
        finally:
            self._admitted -= 1
            link.tokens -= tokens
        stats = current_request.get()
        if stats is not None:
            stats.add(len(seqs), tokens, queue_s, compute_s)
        return outputs
