"""The async engine.

``submit`` admits a request (or raises Overloaded), queues its sequences in a
length-sorted list and awaits their outputs. One loop task packs batches with
:func:`choose_window` and hands each to a single model thread, so requests from
many clients share forwards while the event loop stays free. A request whose
awaiting task is cancelled (its client went away) has its unrun sequences removed
from the queue. A fault in one forward fails only that batch's requests.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..accounting import current_request
from ..errors import EngineUnavailable, InternalError, Overloaded, PoolserveError, RequestTooLarge
from ..models.base import Backend, Batch, TokenSeq
from .heap import HeapTrimmer
from .packer import choose_window

log = logging.getLogger("poolserve.engine")


class EngineObserver(Protocol):
    """Receives the engine's measurements (metrics live above the engine)."""

    def on_batch(self, size: int, tokens: int, padded: int, seconds: float) -> None: ...

    def on_queue_time(self, seconds: float) -> None: ...

    def on_queue_depth(self, sequences: int) -> None: ...

    def on_dropped(self, sequences: int) -> None: ...


class EngineHandle(Protocol):
    """What the serving layer uses of an engine: :class:`Engine` in this process, or a
    front end's :class:`~poolserve.engine.remote.RemoteEngine` for engine processes."""

    max_queued_requests: int
    max_request_tokens: int | None

    @property
    def alive(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self, grace: float | None = None) -> None: ...

    def check_tokens(self, tokens: int) -> None: ...

    async def submit(self, seqs: Sequence[TokenSeq]) -> list[np.ndarray]: ...


class _NullObserver:
    def on_batch(self, size: int, tokens: int, padded: int, seconds: float) -> None:
        pass

    def on_queue_time(self, seconds: float) -> None:
        pass

    def on_queue_depth(self, sequences: int) -> None:
        pass

    def on_dropped(self, sequences: int) -> None:
        pass


@dataclass
class EngineStats:
    """Counters for tests and /metrics: what the engine has really computed."""

    batches: int = 0
    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    failed_batches: int = 0
    dropped_sequences: int = 0


@dataclass(eq=False)
class _Request:
    future: asyncio.Future[list[np.ndarray]]
    size: int
    arrived: float
    results: list[Any] = field(default_factory=list)
    unfinished: int = 0
    waiting: int = 0  # sequences still in the queue
    first_started: float | None = None


@dataclass(eq=False, slots=True)
class _Item:
    key: tuple[int, int]  # (length, arrival order): the queue's sort key
    seq: TokenSeq
    request: _Request
    index: int


def _key(item: _Item) -> tuple[int, int]:
    return item.key


def check_request(
    tokens: int, max_tokens: int | None, admitted: int = 0, max_admitted: int | None = None
) -> None:
    """Admission of one request (this engine's or a front end's stand-in for it): raise
    RequestTooLarge past ``max_tokens``, Overloaded when ``max_admitted`` are in."""
    if max_tokens is not None and tokens > max_tokens:
        raise RequestTooLarge(
            f"{tokens} tokens in one request is over the limit of {max_tokens} "
            "(--max-request-tokens)",
            param="input",
        )
    if max_admitted is not None and admitted >= max_admitted:
        raise Overloaded(
            f"the server is at its limit of {max_admitted} queued requests; retry later"
        )


class Engine:
    """Batches sequences from concurrent requests through one backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_num_batched_tokens: int = 8192,
        max_num_seqs: int = 256,
        max_queued_requests: int = 1024,
        max_request_tokens: int | None = None,
        workers: int = 1,
        observer: EngineObserver | None = None,
        heap: HeapTrimmer | None = None,
    ) -> None:
        self.backend = backend
        # Freed activation memory goes back to the OS between forwards (see heap.py).
        self.heap = heap if heap is not None else HeapTrimmer()
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.max_queued_requests = max_queued_requests
        self.max_request_tokens = max_request_tokens
        # Batches run concurrently on this many model threads (data parallelism: on a
        # small CPU, two 1-thread forwards beat one 2-thread forward, which stalls
        # whenever any other work takes a core).
        self.workers = max(1, workers)
        self._inflight: set[asyncio.Task[None]] = set()
        self.observer: EngineObserver = observer or _NullObserver()
        self.stats = EngineStats()
        self._queue: list[_Item] = []  # sorted by key
        self._arrivals: deque[_Request] = deque()
        self._counter = itertools.count()
        self._admitted = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._dead_reason: str | None = None

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        """Start the model thread and the packing loop on the running event loop."""
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="poolserve-model"
        )
        self._wakeup = asyncio.Event()
        self._accepting = True
        self._dead_reason = None
        self._task = asyncio.create_task(self._run(), name="poolserve-engine")
        self.heap.start()

    async def stop(self, grace: float | None = None) -> None:
        """Stop admitting; let queued work finish (up to ``grace`` seconds); then stop.

        Requests still queued after the grace period fail with EngineUnavailable.
        """
        self._accepting = False
        deadline = None if grace is None else time.monotonic() + grace
        while self._admitted and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            # A loop that died already logged and answered its error; stopping is clean.
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self._fail_all(EngineUnavailable("the server is shutting down"))
        if self._executor is not None:
            executor, self._executor = self._executor, None
            # A forward still running past the grace period must not freeze the loop.
            await asyncio.to_thread(executor.shutdown, wait=True)
        await asyncio.to_thread(self.heap.stop)

    @property
    def alive(self) -> bool:
        """True while the loop runs and can take work."""
        return self._task is not None and not self._task.done() and self._dead_reason is None

    @property
    def queued_sequences(self) -> int:
        """Sequences waiting for a batch."""
        return len(self._queue)

    @property
    def admitted_requests(self) -> int:
        """Requests admitted and not yet answered."""
        return self._admitted

    # -- the public call -------------------------------------------------
    def check_tokens(self, tokens: int) -> None:
        """Raise RequestTooLarge when one request's ``tokens`` are over the limit."""
        check_request(tokens, self.max_request_tokens)

    async def submit(self, seqs: Sequence[TokenSeq]) -> list[np.ndarray]:
        """Run ``seqs`` through the model; return one output per sequence, in order.

        Raises RequestTooLarge when ``seqs`` hold more than ``max_request_tokens``,
        Overloaded when ``max_queued_requests`` are already admitted,
        EngineUnavailable when the engine is stopping or dead, InternalError when
        the forward of a batch holding one of ``seqs`` failed. Cancelling the caller
        removes its not yet computed sequences from the queue.
        """
        if not self._accepting or not self.alive:
            raise EngineUnavailable(self._dead_reason or "the engine is not running")
        tokens = sum(len(s) for s in seqs)
        check_request(tokens, self.max_request_tokens, self._admitted, self.max_queued_requests)
        if not seqs:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(future=loop.create_future(), size=len(seqs), arrived=time.monotonic())
        request.results = [None] * len(seqs)
        request.unfinished = request.waiting = len(seqs)
        order = next(self._counter)
        items = [_Item((len(s), order), s, request, i) for i, s in enumerate(seqs)]
        items.sort(key=_key)
        # Merging two sorted runs: timsort does this in linear time.
        self._queue.extend(items)
        self._queue.sort(key=_key)
        self._arrivals.append(request)
        self._admitted += 1
        self.observer.on_queue_depth(len(self._queue))
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            outputs = await request.future
        except asyncio.CancelledError:
            self._drop(request)
            raise
        finally:
            self._admitted -= 1
        stats = current_request.get()
        if stats is not None:
            now = time.monotonic()
            started = request.first_started or now
            stats.add(len(seqs), tokens, started - request.arrived, now - started)
        return outputs

    # -- internals -------------------------------------------------------
    def _drop(self, request: _Request) -> None:
        """Remove a request's queued sequences (its caller is gone)."""
        if request.waiting:
            before = len(self._queue)
            self._queue = [it for it in self._queue if it.request is not request]
            dropped = before - len(self._queue)
            self.stats.dropped_sequences += dropped
            self.observer.on_dropped(dropped)
            request.waiting = 0
            self.observer.on_queue_depth(len(self._queue))
        if not request.future.done():
            request.future.cancel()

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if request.waiting:
            self._queue = [it for it in self._queue if it.request is not request]
            request.waiting = 0
        if not request.future.done():
            request.future.set_exception(exc)

    def _fail_all(self, exc: PoolserveError) -> None:
        for request in {it.request for it in self._queue} | set(self._arrivals):
            self._fail(request, exc)
        self._queue.clear()
        self._arrivals.clear()

    def _next_batch(self) -> list[_Item]:
        while self._arrivals and self._arrivals[0].waiting == 0:
            self._arrivals.popleft()
        oldest = self._arrivals[0]
        # Any queued item of the oldest request anchors the window.
        anchor = bisect.bisect_left(self._queue, self._find_item(oldest).key, key=_key)
        # Only rows within max_num_seqs of the anchor can share its batch.
        base = max(0, anchor - self.max_num_seqs)
        lengths = [it.key[0] for it in self._queue[base : anchor + self.max_num_seqs]]
        lo, hi = choose_window(
            lengths,
            anchor - base,
            max_tokens=self.max_num_batched_tokens,
            max_seqs=self.max_num_seqs,
        )
        lo, hi = lo + base, hi + base
        batch = self._queue[lo:hi]
        del self._queue[lo:hi]
        return batch

    def _find_item(self, request: _Request) -> _Item:
        for item in self._queue:
            if item.request is request:
                return item
        raise RuntimeError("request has waiting sequences but none is queued")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None and self._executor is not None
        try:
            while True:
                if not self._queue or len(self._inflight) >= self.workers:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = self._next_batch()
                now = time.monotonic()
                for item in batch:
                    req = item.request
                    req.waiting -= 1
                    if req.first_started is None:
                        req.first_started = now
                        self.observer.on_queue_time(now - req.arrived)
                self.observer.on_queue_depth(len(self._queue))
                task = asyncio.create_task(self._execute(loop, batch))
                self._inflight.add(task)
                task.add_done_callback(self._batch_done)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the loop itself broke: say so, fail everyone
            log.exception("engine loop died")
            self._dead_reason = f"the engine stopped after an internal error: {exc}"
            self._fail_all(EngineUnavailable(self._dead_reason))
            raise

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._wakeup is not None:
            self._wakeup.set()

    def _forward(self, batch: Batch) -> np.ndarray | Sequence[np.ndarray]:
        """On a model thread: the backend's forward (its freed memory is trimmed later)."""
        outputs = self.backend.forward(batch)
        self.heap.note_forward()
        return outputs

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        seqs = [item.seq for item in batch]
        started = time.monotonic()
        try:
            outputs = await loop.run_in_executor(self._executor, self._forward, Batch(seqs))
            if len(outputs) != len(seqs):
                raise RuntimeError(
                    f"backend returned {len(outputs)} outputs for {len(seqs)} inputs"
                )
        except asyncio.CancelledError:  # stop() past its grace period: answer, don't hang
            for request in {item.request for item in batch}:
                self._fail(request, EngineUnavailable("the server is shutting down"))
            raise
        except BaseException as exc:
            # Any fault, even a BaseException from the backend, answers this batch's
            # requests (500) instead of leaving them waiting; the engine goes on.
            self.stats.failed_batches += 1
            log.exception("forward of a batch of %d sequences failed", len(seqs))
            error = InternalError(f"the model failed on this request's batch: {exc!r}")
            for request in {item.request for item in batch}:
                self._fail(request, error)
            if not isinstance(exc, Exception):
                raise
            return
        seconds = time.monotonic() - started
        tokens = sum(len(s) for s in seqs)
        padded = Batch(seqs).padded_tokens
        self.stats.batches += 1
        self.stats.sequences += len(seqs)
        self.stats.tokens += tokens
        self.stats.padded_tokens += padded
        self.observer.on_batch(len(seqs), tokens, padded, seconds)
        for item, output in zip(batch, outputs, strict=True):  # lengths checked above
            request = item.request
            if request.future.done():  # cancelled or failed meanwhile
                continue
            request.results[item.index] = output
            request.unfinished -= 1
            if request.unfinished == 0:
                request.future.set_result(request.results)
