"""The offline engine on Ray: a Ray Data predictor, and file jobs over a Ray actor pool.

:class:`PoolingPredictor` is a callable class for ``Dataset.map_batches``: each Ray
Data actor holds one :class:`~poolserve.offline.PoolingModel` and adds a column to each
batch::

    ds = ray.data.read_parquet("texts.parquet")
    ds = ds.map_batches(
        PoolingPredictor,
        fn_constructor_kwargs={"model": "BAAI/bge-small-en-v1.5", "text_column": "text"},
        concurrency=2,   # actors, each with its own engine
        batch_size=256,
    )

:func:`ray_compute` is what ``poolserve embed|classify|score ... --ray [ADDRESS]`` runs:
the file job's windows computed by ``actors`` Ray actors, each holding one engine.

Promises:

* Both compute rows with :class:`~poolserve.batch.window.WindowWorker`, the code a
  file job runs in-process: the same values, the same per-row errors.
* ``PoolingPredictor`` keeps the batch's rows and columns and adds ``embedding``
  (float32 [n, dim]), ``probs`` (float32 [n, num_labels]) and ``label``, or ``score``
  (float32 [n]); output column names are options. A bad row (a null or empty text, an
  over-long one without truncation, ...) raises ValueError naming the row and the
  engine's message, unless ``on_error="column"``: then its value is NaN and an
  ``error`` column holds its message (None for good rows).
* ``ray_compute`` yields results in window order, holds at most ``IN_FLIGHT_PER_ACTOR``
  windows per actor (submitted or finished but not yet yielded), starts Ray only when
  a window needs computing, and on exhaustion or close kills its actors and shuts down
  the Ray it started (joining a running cluster leaves it running).
* Nothing here imports ray at import time; without the ``poolserve[ray]`` extra,
  :func:`ray_compute` raises a PoolserveError saying ``pip install poolserve[ray]``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..batch.window import Compute, TaskOptions, Window, WindowResult, WindowWorker, prefetch
from .ray_serve import require_ray

log = logging.getLogger("poolserve.ray")

# Windows one actor holds at once: one computing, one waiting next to it (so the actor
# never idles for a transfer), the driver's memory bounded.
IN_FLIGHT_PER_ACTOR = 2
# An actor lost (its node gone, killed for memory) is restarted, its windows rerun:
# computing a window has no side effect.
ACTOR_RESTARTS = 2

_OUTPUTS = {"embed": "embedding", "classify": "probs", "score": "score"}


def _absolute(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with local paths made absolute: an actor may run in another directory."""
    out = dict(options)
    for key in ("model", "tokenizer", "chat_template"):
        value = out.get(key)
        if isinstance(value, str) and value and os.path.exists(value):
            out[key] = os.path.abspath(value)
    return out


_CORE_LOCKS: list[Any] = []  # held for the process's life: its cores stay claimed


def claim_cores() -> set[int] | None:
    """In a Ray actor granted ``k >= 1`` whole CPUs, pin this thread, and so every thread
    it starts from now on (the engine's, torch's, OpenVINO's), to ``k`` cores of the
    node that no other poolserve actor there holds; return them.

    Why: an engine sizes its threads by the cores it may use (the affinity mask), so
    without this every actor of a node would take all of its cores (2 actors on 2 cores:
    twice as many threads as cores, measured 0.72x one process). Cores are claimed with
    ``flock`` on files under the temp directory, released when the process ends. Nothing
    happens (None) outside Ray, with a fractional share, or when ``k`` cores are not
    free.
    """
    import fcntl

    try:
        import ray

        share = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except Exception:
        return None
    cores = sorted(os.sched_getaffinity(0))
    k = math.floor(share + 1e-9)
    if k < 1 or k >= len(cores) or _CORE_LOCKS:
        return None
    folder = Path(tempfile.gettempdir()) / "poolserve-cores"
    folder.mkdir(exist_ok=True)
    held: list[tuple[int, Any]] = []
    for core in cores:
        f = open(folder / f"{core}.lock", "a")  # noqa: SIM115 (held open on purpose)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        held.append((core, f))
        if len(held) == k:
            break
    if len(held) < k:
        for _, f in held:
            f.close()
        return None
    _CORE_LOCKS.extend(f for _, f in held)
    chosen = {core for core, _ in held}
    os.sched_setaffinity(0, chosen)
    return chosen


class PoolingPredictor:
    """A ``Dataset.map_batches`` callable class: one engine per Ray Data actor.

    ``model`` and ``model_options`` are :class:`~poolserve.offline.PoolingModel`'s
    arguments; ``task`` is "embed", "classify" or "score"; ``text_column`` names the
    text (embed, classify) and ``text_columns`` the two texts of a pair (score).
    ``normalize``, ``dimensions``, ``truncate_prompt_tokens``, ``activation`` and
    ``chunk`` are as for ``poolserve embed|classify|score``. ``output_column`` defaults
    to "embedding", "probs" or "score"; classify also adds ``label_column``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        task: str = "embed",
        text_column: str = "text",
        text_columns: Sequence[str] = ("text_1", "text_2"),
        output_column: str | None = None,
        label_column: str = "label",
        on_error: str = "raise",
        error_column: str = "error",
        normalize: bool | None = None,
        dimensions: int | None = None,
        truncate_prompt_tokens: int | None = None,
        activation: bool | None = None,
        chunk: int = 256,
        model_options: dict[str, Any] | None = None,
    ) -> None:
        from ..offline import PoolingModel

        claim_cores()  # before the engine exists, so it sizes itself for its share
        if on_error not in ("raise", "column"):
            raise ValueError(f"on_error must be 'raise' or 'column', not {on_error!r}")
        if task == "score" and len(text_columns) != 2:
            raise ValueError("text_columns must name two columns (text_1, text_2)")
        options = TaskOptions(
            task=task,
            normalize=normalize,
            dimensions=dimensions,
            truncate_prompt_tokens=truncate_prompt_tokens,
            activation=activation,
            chunk=chunk,
        )
        self.model = PoolingModel(**_absolute({"model": model, **(model_options or {})}))
        self.worker = WindowWorker(self.model, options)
        # batch column -> the window's column name WindowWorker reads
        self.inputs = (
            {text_columns[0]: "text_1", text_columns[1]: "text_2"}
            if task == "score"
            else {text_column: "text"}
        )
        self.output_column = output_column or _OUTPUTS[task]
        self.label_column = label_column
        self.on_error = on_error
        self.error_column = error_column
        self.rows_seen = 0  # rows of earlier batches: error messages name a global-ish row

    def __call__(self, batch: Any) -> Any:
        """Add the output column(s) to ``batch`` (a dict of numpy arrays, or a pandas
        DataFrame with ``batch_format="pandas"``); same type back."""
        columns = {name: [_plain(v) for v in batch[col]] for col, name in self.inputs.items()}
        n = len(next(iter(columns.values())))
        result = self.worker.run(Window(index=0, start=0, columns=columns))
        first_row, self.rows_seen = self.rows_seen, self.rows_seen + n
        if result.errors and self.on_error == "raise":
            row, message = next(iter(result.errors.items()))
            extra = len(result.errors) - 1
            more = f" (and {extra} more in this batch)" if extra else ""
            raise ValueError(
                f"row {row} of the batch (row {first_row + row} of this actor's input): "
                f"{message}{more}"
            )
        added: dict[str, Any] = {self.output_column: result.values}
        if self.worker.options.task == "classify":
            added[self.label_column] = self._labels(result)
        if self.on_error == "column":
            added[self.error_column] = np.array(
                [result.errors.get(i) for i in range(n)], dtype=object
            )
        if _is_dataframe(batch):
            out = batch.copy()
            for name, values in added.items():
                out[name] = list(values) if getattr(values, "ndim", 1) > 1 else values
            return out
        return {**batch, **added}

    def _labels(self, result: WindowResult) -> np.ndarray:
        names = self.model.labels
        best = np.argmax(np.nan_to_num(result.values, nan=-np.inf), axis=1)
        labels = [
            None if i in result.errors else (names[k] if names else str(k))
            for i, k in enumerate(best)
        ]
        return np.array(labels, dtype=object)

    def close(self) -> None:
        """Stop the engine and its threads. Ray Data needs not call it (its actors end
        with their process); a predictor used directly should (or use ``with``)."""
        self.worker.close()
        self.model.close()

    def __enter__(self) -> PoolingPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """A cell as WindowWorker expects: ``np.str_`` is a str already; NaN/None stay bad."""
    return str(value) if isinstance(value, np.str_) else value


def _is_dataframe(batch: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(batch, pandas.DataFrame)


# -- file jobs: `--ray [ADDRESS]` ------------------------------------------------------


class WindowActor:
    """One Ray actor of a file job: one engine and its :class:`WindowWorker`."""

    def __init__(self, model_options: dict[str, Any], options: TaskOptions) -> None:
        from ..offline import PoolingModel

        self.cores = claim_cores()  # before the engine exists: it sizes itself for them
        self.model = PoolingModel(**model_options)
        self.worker = WindowWorker(self.model, options)

    def ready(self) -> bool:
        return True

    def run(self, window: Window) -> WindowResult:
        return self.worker.run(window)


def actor_resources(node_cpus: Sequence[float], actors: int, gpus: float = 0.0) -> dict[str, float]:
    """Resources of one of ``actors`` actors so that all fit on nodes of ``node_cpus``
    CPUs: the largest CPU share that fits (a fraction when actors outnumber CPUs); with
    ``gpus`` in the cluster (a model on GPU), an equal share of them too."""
    share = 1.0
    cpus = [c for c in node_cpus if c > 0]
    if cpus:
        candidates = sorted({c / k for c in cpus for k in range(1, actors + 1)}, reverse=True)
        share = next(
            (s for s in candidates if sum(math.floor(c / s + 1e-9) for c in cpus) >= actors),
            min(cpus) / actors,
        )
        share = max(0.01, math.floor(share * 100) / 100)
    out = {"num_cpus": share}
    if gpus:
        out["num_gpus"] = min(1.0, gpus / actors)
    return out


def _cluster(ray: Any) -> tuple[list[float], float]:
    """(CPUs of each alive node, GPUs in the cluster)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes]
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    return cpus, gpus


def ray_compute(
    address: str | None,
    actors: int | None,
    model_options: dict[str, Any],
    task_options: TaskOptions,
) -> Compute:
    """A file job's ``compute`` on ``actors`` Ray actors, each holding one engine.

    ``address``: None or "auto" joins the Ray this process or machine already runs
    (``RAY_ADDRESS``, ``ray start``), else starts a private local one; any other value
    ("ray://HOST:10001", "HOST:6379") must be a running cluster; a Ray this process has
    initialised already is used as it is (and left running). ``actors`` (None):
    one per GPU when the model runs on GPUs, else one per CPU of the cluster.
    """
    model_options = _absolute(model_options)

    def compute(windows: Iterator[Window]) -> Iterator[WindowResult]:
        ahead = prefetch(windows)
        first = next(ahead, None)
        if first is None:
            return  # nothing to compute: no Ray at all
        if address in (None, "auto") and not _cluster_around():
            # A private instance will start: its services on loopback, not on the
            # machine's address (read when ray is first imported, so set before).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = require_ray()
        started = _connect(ray, address)
        pool: list[Any] = []
        try:
            pool = _start_actors(ray, actors, model_options, task_options)
            yield from _run_windows(ray, pool, first, ahead)
        finally:
            for actor in pool:
                try:
                    ray.kill(actor)
                except Exception as exc:  # its node is gone already: nothing to free
                    log.debug("killing a window actor: %s", exc)
            if started:
                ray.shutdown()

    return compute


def _cluster_around() -> bool:
    """Whether ``ray.init(address="auto")`` could find a cluster to join (``RAY_ADDRESS``,
    or a ``ray start`` on this machine), told without importing ray."""
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    return bool(os.environ.get("RAY_ADDRESS")) or current.exists()


def _connect(ray: Any, address: str | None) -> bool:
    """Initialise Ray for ``address``; True when this started a local instance."""
    if ray.is_initialized():
        return False
    if address in (None, "auto"):
        # A running cluster if there is one (RAY_ADDRESS, `ray start` here), else a
        # private local instance.
        try:
            ray.init(address="auto", log_to_driver=False)
            return False
        except (ConnectionError, RuntimeError):
            pass
        # On loopback when no cluster was around before ray was imported (compute).
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return True
    ray.init(address=address, log_to_driver=False)
    return False


def _start_actors(
    ray: Any, actors: int | None, model_options: dict[str, Any], options: TaskOptions
) -> list[Any]:
    cpus, gpus = _cluster(ray)
    on_gpu = gpus > 0 and str(model_options.get("device") or "auto") != "cpu"
    count = actors or (int(gpus) if on_gpu and gpus >= 1 else max(1, int(sum(cpus))))
    resources = actor_resources(cpus, count, gpus if on_gpu else 0.0)
    print(
        f"poolserve: {count} Ray actor(s), {resources} each, on {len(cpus)} node(s)",
        file=sys.stderr,
    )
    remote = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS, **resources)(
        WindowActor
    )
    pool = [remote.remote(model_options, options) for _ in range(count)]
    ray.get([a.ready.remote() for a in pool])  # a model that fails to load fails here
    return pool


def _run_windows(
    ray: Any, pool: list[Any], first: Window, rest: Iterator[Window]
) -> Iterator[WindowResult]:
    """Feed windows to the least busy actor, at most IN_FLIGHT_PER_ACTOR each counting
    finished ones not yet yielded; yield results in window order."""
    busy = collections.Counter({i: 0 for i in range(len(pool))})
    owner: dict[Any, tuple[int, int]] = {}  # ref -> (window index, actor)
    done: dict[int, tuple[WindowResult, int]] = {}  # index -> (result, actor)
    order: collections.deque[int] = collections.deque()  # submitted indexes, in order
    windows = itertools.chain([first], rest)
    exhausted = False

    while True:
        # Fill: every actor up to its limit.
        while not exhausted:
            actor = min(busy, key=lambda i: busy[i])
            if busy[actor] >= IN_FLIGHT_PER_ACTOR:
                break
            window = next(windows, None)
            if window is None:
                exhausted = True
                break
            owner[pool[actor].run.remote(window)] = (window.index, actor)
            busy[actor] += 1
            order.append(window.index)
        if not order:
            return
        # Yield what is ready, in order.
        while order and order[0] in done:
            result, actor = done.pop(order.popleft())
            busy[actor] -= 1
            yield result
        if order and order[0] not in done:
            ready, _ = ray.wait(list(owner), num_returns=1)
            for ref in ready:
                index, actor = owner.pop(ref)
                done[index] = (ray.get(ref), actor)
