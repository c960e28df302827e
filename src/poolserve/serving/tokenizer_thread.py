"""One tokenizer thread per served model, fed by every request at once.

Handing each request's tokenization to a thread pool costs a thread hop, a lock and a
self-pipe wake-up per request, and the pool's threads queue on the tokenizer's lock
anyway (measured: ~60% of a 1-text request's server time). Here requests append a job
and return to the event loop; the thread takes every job waiting, tokenizes all the
plain-text ones with equal options in one Rust call
(:meth:`InputProcessor.from_texts_many`), runs the others in order, and answers the
whole drain with one wake-up of the event loop. Under load, drains grow by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import InternalError
from ..inputs.processor import InputProcessor

# Texts of at most this many characters in all are tokenized on the event loop when the
# thread is idle.
INLINE_CHARS = 512


class _Job:
    __slots__ = ("args", "fn", "future", "kwargs", "loop", "texts")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.loop = loop
        self.future = future
        self.fn = fn  # None: InputProcessor.from_texts(args[0], **kwargs), mergeable
        self.args = args
        self.kwargs = kwargs


def _deliver(answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """On the event loop: settle the futures of one drain (skipping cancelled ones)."""
    for job, value, error in answers:
        if job.future.done():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)


class TokenizerThread:
    """Runs an :class:`InputProcessor`'s work on one daemon thread, batched across requests.

    ``texts(...)`` awaits ``processor.from_texts``; ``call(fn, ...)`` awaits any other
    processor call. Both raise what the call raised. The thread starts on first use
    and ends with :meth:`close` (or with the process).
    """

    def __init__(self, processor: InputProcessor) -> None:
        self.processor = processor
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = False  # the thread holds jobs (new small ones then queue behind)

    async def texts(self, texts: list[str], **kwargs: Any) -> Any:
        """``processor.from_texts(texts, **kwargs)``, merged with other requests' texts."""
        if not self._busy and sum(map(len, texts)) <= INLINE_CHARS:
            # Idle thread, small job: a hand-off costs more than the work (~30 us a text).
            return self.processor.from_texts(texts, **kwargs)
        return await self._submit(None, (texts,), kwargs)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the tokenizer thread (chat rendering, pairs, ids)."""
        return await self._submit(fn, args, kwargs)

    async def _submit(
        self, fn: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), fn, args, kwargs)
        with self._ready:
            if self._closed:
                raise RuntimeError("the tokenizer thread is closed")
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="poolserve-tokenizer", daemon=True
                )
                self._thread.start()
            self._ready.notify()
        return await job.future

    def close(self) -> None:
        """Stop the thread after the jobs already queued."""
        with self._ready:
            self._closed = True
            thread, self._thread = self._thread, None
            self._ready.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                jobs = list(self._jobs)
                self._jobs.clear()
                self._busy = True
            try:
                answers = self._run(jobs)
            except BaseException as exc:  # never leave a request waiting on a dead thread
                error = InternalError(f"tokenization failed: {exc!r}")
                answers = [(job, None, error) for job in jobs]
            self._busy = bool(self._jobs)
            by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for answer in answers:
                by_loop.setdefault(answer[0].loop, []).append(answer)
            for loop, batch in by_loop.items():
                # A closed loop has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_deliver, batch)

    def _run(self, jobs: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        answers: list[tuple[_Job, Any, BaseException | None]] = []
        mergeable = [j for j in jobs if j.fn is None]
        if mergeable:
            results = self.processor.from_texts_many([(j.args[0], j.kwargs) for j in mergeable])
            for job, result in zip(mergeable, results, strict=True):
                if isinstance(result, Exception):
                    answers.append((job, None, result))
                else:
                    answers.append((job, result, None))
        for job in jobs:
            if job.fn is None:
                continue
            try:
                answers.append((job, job.fn(*job.args, **job.kwargs), None))
            except Exception as exc:  # the caller's request fails with it, not the thread
                answers.append((job, None, exc))
        return answers
