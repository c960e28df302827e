"""Windows of rows and the worker that computes them: the unit of a file job.

A file job cuts its input into windows of consecutive rows (:class:`Window`); a
:class:`WindowWorker` holding one offline engine turns each into a
:class:`WindowResult`. The job runner (``job.py``) does this in-process; a Ray actor
pool does the same with one worker per actor. Promises:

* ``WindowResult.values`` rows are in the window's input order, whatever order the
  worker computed them in (it sorts by length so similar rows share engine batches).
* A row the engine rejects as bad input (a 4xx :class:`~poolserve.errors.PoolserveError`:
  empty text, too long without truncation, ...) fails alone: its message goes into
  ``errors`` under its absolute row number and its ``values`` row is NaN; the other
  rows of its chunk are computed normally. Any other error (engine down, an option
  the model refuses such as ``dimensions`` past its width, a bug) raises.
* A cell that is not a string (a missing field, a null, a number) is a bad row too.
* :func:`local_compute` is the in-process ``compute`` of a job: one engine, loaded
  only when a window needs computing, with the next window read ahead by a thread.
* Everything here pickles (:class:`Window`, :class:`WindowResult`, :class:`TaskOptions`,
  :class:`Missing`) except the worker itself, which is built where its model lives.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import Overloaded, PoolserveError

if TYPE_CHECKING:
    from ..offline import PoolingModel

T = TypeVar("T")
TASKS = ("embed", "classify", "score")
# Chunks handed to the engine at once by one worker: enough to keep the tokenizer
# thread busy while the model computes the previous batch, few enough that rows of a
# window still meet in length order (see docs/file-jobs.md for the measurement).
IN_FLIGHT = 3


@dataclass
class Window:
    """Consecutive rows of the input.

    ``columns`` holds ``"text"`` (embed/classify) or ``"text_1"``/``"text_2"`` (score),
    plus ``"id"`` when the job carries ids; each list has one entry per row.
    """

    index: int  # window number, 0-based, deterministic for a given input + window size
    start: int  # row number (0-based, data rows) of the window's first row
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


@dataclass
class WindowResult:
    """What a window computed to; ``values`` rows line up with the window's rows."""

    index: int
    start: int
    ids: list[Any] | None
    # embed: float32 [n, dim]; classify: float32 [n, num_labels] probs; score: float32 [n]
    values: np.ndarray
    errors: dict[int, str]  # row number -> message; those rows of values are NaN


@dataclass(frozen=True)
class TaskOptions:
    """What to compute per row (picklable; part of a job's fingerprint)."""

    task: str  # "embed" | "classify" | "score"
    normalize: bool | None = None
    dimensions: int | None = None
    truncate_prompt_tokens: int | None = None
    activation: bool | None = None
    chunk: int = 256  # rows per engine call

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if self.chunk < 1:
            raise ValueError("chunk must be at least 1")


# What a file job calls to turn windows into results, in window order.
Compute = Callable[[Iterator[Window]], Iterator[WindowResult]]


@dataclass(frozen=True)
class Missing:
    """A cell the reader could not fill (the row lacks ``field``, or ``reason``); a bad row."""

    field: str
    reason: str = ""


def cell_problem(value: Any, column: str) -> str | None:
    """Why ``value`` cannot be sent as text, or None when it is a string."""
    if isinstance(value, str):
        return None
    if isinstance(value, Missing):
        return value.reason or f"missing field {value.field!r}"
    if value is None:
        return f"{column} is null"
    return f"{column} is not a string (got {type(value).__name__})"


# Errors about these request parameters are the job's options at fault (every row
# would fail alike): they stop the job instead of failing row by row.
_OPTION_PARAMS = frozenset({"dimensions", "truncate_prompt_tokens", "normalize", "activation"})


def _is_row_error(exc: PoolserveError) -> bool:
    # 4xx but not 429 (overload: retried) nor 499/408 (connection-level): the input
    # itself is at fault, so splitting the chunk isolates the culprit rows.
    if exc.param in _OPTION_PARAMS:
        return False
    return 400 <= exc.status < 500 and exc.status not in (408, 429, 499)


class WindowWorker:
    """Holds one offline engine (poolserve.offline.PoolingModel); runs windows."""

    def __init__(self, model: PoolingModel, options: TaskOptions) -> None:
        self.model = model
        self.options = options
        limit = getattr(getattr(model, "ctx", None), "max_client_batch_size", None)
        self.chunk = min(options.chunk, limit) if isinstance(limit, int) else options.chunk
        self._call = self._bind()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _bind(self) -> Callable[[dict[str, list[str]]], np.ndarray]:
        """The engine call for this task: a chunk's columns -> float32 values."""
        o, m = self.options, self.model
        if o.task == "embed":
            return lambda c: m.embed(
                c["text"],
                normalize=o.normalize,
                dimensions=o.dimensions,
                truncate_prompt_tokens=o.truncate_prompt_tokens,
            )
        if o.task == "classify":
            return lambda c: m.classify(
                c["text"], activation=o.activation, truncate_prompt_tokens=o.truncate_prompt_tokens
            )
        # N:N pairing in /score order; a chunk of one pair is 1:1, also row-aligned.
        return lambda c: m.score(
            c["text_1"],
            c["text_2"],
            activation=o.activation,
            truncate_prompt_tokens=o.truncate_prompt_tokens,
        )

    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row of ``values`` (needed when no row of a window succeeds)."""
        task = self.options.task
        if task == "score":
            return ()
        info = self.model.ctx.info
        if task == "classify":
            return (int(info.num_labels),)
        return (int(self.options.dimensions or info.dimension),)

    def text_columns(self) -> tuple[str, ...]:
        return ("text_1", "text_2") if self.options.task == "score" else ("text",)

    def run(self, window: Window) -> WindowResult:
        """Compute every row of ``window``; bad rows are reported, not raised."""
        cols = self.text_columns()
        n = len(window)
        errors: dict[int, str] = {}
        good: list[int] = []
        ids = window.columns.get("id")
        for i in range(n):
            problem = next(
                (p for c in cols if (p := cell_problem(window.columns[c][i], c)) is not None),
                None,
            )
            if problem is None and ids is not None and isinstance(ids[i], Missing):
                problem = cell_problem(ids[i], "id")
            if problem is None:
                good.append(i)
            else:
                errors[window.start + i] = problem
        # Length-sorted so each chunk (and each engine batch) pads to similar lengths.
        good.sort(key=lambda i: sum(len(window.columns[c][i]) for c in cols))
        chunks = [good[k : k + self.chunk] for k in range(0, len(good), self.chunk)]
        values = np.full((n, *self.row_shape()), np.nan, dtype=np.float32)
        done = self._map(lambda rows: self._compute(window, cols, rows), chunks)
        for rows, (vals, errs) in zip(chunks, done, strict=True):
            if vals is not None:
                values[rows] = vals
            for i, msg in errs.items():
                errors[window.start + i] = msg
        out_ids = None if ids is None else [None if isinstance(v, Missing) else v for v in ids]
        return WindowResult(
            window.index, window.start, out_ids, values, dict(sorted(errors.items()))
        )

    def _map(self, fn: Callable[[list[int]], Any], chunks: list[list[int]]) -> list[Any]:
        if len(chunks) <= 1 or IN_FLIGHT <= 1:
            return [fn(c) for c in chunks]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="poolserve-window")
        return list(self._pool.map(fn, chunks))

    def _compute(
        self, window: Window, cols: Sequence[str], rows: list[int]
    ) -> tuple[np.ndarray | None, dict[int, str]]:
        """Values for ``rows`` (window-relative) and the errors of those that failed.

        On a row error the chunk is split in halves and each retried, so k bad rows
        cost O(k log n) extra calls and every good row still gets its value.
        """
        if not rows:
            return None, {}
        try:
            vals = self._with_retry({c: [window.columns[c][i] for i in rows] for c in cols})
            return np.asarray(vals, dtype=np.float32), {}
        except PoolserveError as exc:
            if not _is_row_error(exc):
                raise
            if len(rows) == 1:
                return None, {rows[0]: exc.message}
        half = len(rows) // 2
        out = np.full((len(rows), *self.row_shape()), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        for part, sl in ((rows[:half], slice(0, half)), (rows[half:], slice(half, None))):
            part_vals, errs = self._compute(window, cols, part)
            if part_vals is not None:
                out[sl] = part_vals
            errors.update(errs)
        return out, errors

    def _with_retry(self, columns: dict[str, list[str]]) -> np.ndarray:
        # Overload is transient (the engine's admission limit): back off and resend.
        for attempt in range(50):
            try:
                return self._call(columns)
            except Overloaded:
                time.sleep(min(0.05 * 2**attempt, 2.0))
        return self._call(columns)

    def close(self) -> None:
        """Stop the worker's threads (the model stays open: the caller owns it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items`` read ahead by a thread (``depth`` items), so reading overlaps compute."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                q.put((kind, value), timeout=0.1)
                return True
        return False  # the consumer is gone

    def pump() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put("error", exc)

    thread = threading.Thread(target=pump, daemon=True, name="poolserve-read")
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def local_compute(model_options: dict[str, Any], options: TaskOptions) -> Compute:
    """A ``compute`` on one in-process engine, loaded only if a window needs computing.

    The next window is read ahead by a thread and computed while the caller writes the
    previous result, so the engine does not wait on reading or writing.
    """

    def compute(windows: Iterator[Window]) -> Iterator[WindowResult]:
        ahead = prefetch(windows)
        first = next(ahead, None)
        if first is None:
            return
        from ..offline import PoolingModel

        with PoolingModel(**model_options) as model:
            worker = WindowWorker(model, options)
            runner = ThreadPoolExecutor(1, thread_name_prefix="poolserve-compute")
            try:
                pending = runner.submit(worker.run, first)
                for window in ahead:
                    queued = runner.submit(worker.run, window)  # starts when pending ends
                    yield pending.result()
                    pending = queued
                yield pending.result()
            finally:
                runner.shutdown(wait=False, cancel_futures=True)
                worker.close()

    return compute
