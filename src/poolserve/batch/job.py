"""The resumable file job: input windows -> compute -> checkpointed shards -> one output.

Promises:

* Exactly once. Each finished window is written as a shard in ``OUT.parts/`` (temp
  file, fsync, ``os.replace``), after its errors sidecar; a window is done iff its
  shard exists. ``checkpoint.json`` there holds the job's fingerprint (input path,
  size and mtime, formats, fields, model options, task options, window size). Killed
  at any point and run again with the same arguments, the job skips the done windows,
  computes the rest, merges the shards in order into ``OUT`` (temp file +
  ``os.replace``) and only then removes the parts (renamed away first, so a half-removed
  parts directory is never mistaken for a checkpoint). A rerun with other arguments is
  refused (:class:`JobError`) unless ``restart`` is set.
* Order. ``compute`` gets the windows still to do, in order, and must yield their
  results in the same order; output rows are in input order.
* Memory. One window being read, the windows ``compute`` holds, one shard being merged:
  nothing grows with the number of rows.
* Bad rows. ``on_error="fail"`` stops at the first window with a bad row (exit 1),
  done windows stay checkpointed; ``"skip"`` keeps the row's place with a null/NaN
  value and lists it in ``OUT.errors.jsonl``. Every bad row is named on stderr by row.

``run_job`` knows nothing of how windows are computed: ``window.local_compute`` runs
them on an in-process :class:`~poolserve.offline.PoolingModel`; the Ray runner passes
its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import files
from .window import Compute, TaskOptions, WindowResult

CHECKPOINT = "checkpoint.json"
VERSION = 1
LOG_EVERY_S = 10.0


class JobError(Exception):
    """The job cannot go on; ``code`` is the exit status (1: bad rows, 2: usage/refusal)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class JobSpec:
    """Everything a file job needs; ``model_options`` are ``PoolingModel(**...)`` kwargs."""

    input: str
    output: str
    options: TaskOptions
    model_options: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=lambda: {"text": "text"})
    window: int = 8192
    on_error: str = "fail"  # "fail" | "skip"
    restart: bool = False
    input_format: str | None = None  # None: from the suffix (stdin: txt)
    output_format: str | None = None  # None: from the suffix (stdout: jsonl)
    progress: bool = True

    def formats(self) -> tuple[str, str]:
        fin = self.input_format or files.detect_format(self.input, files.INPUT_FORMATS, "txt")
        fout = self.output_format or files.detect_format(
            self.output, files.OUTPUT_FORMATS, "jsonl" if self.output == "-" else None
        )
        files.need_pyarrow(fin)
        files.need_pyarrow(fout)
        return fin, fout


@dataclass
class Summary:
    rows: int  # rows in the output
    computed: int  # rows computed by this run (the rest were checkpointed before)
    failed: int  # bad rows in the output (all runs)
    seconds: float

    def line(self, output: str) -> str:
        rate = self.computed / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.rows - self.computed} resumed" if self.rows != self.computed else ""
        return (
            f"poolserve: {self.rows} rows{resumed}, {self.failed} failed, "
            f"{self.seconds:.1f} s, {rate:.0f} rows/s -> {output}"
        )


def fingerprint(spec: JobSpec) -> dict[str, Any]:
    """What must not change between a checkpoint and its resumption.

    Left out on purpose: ``chunk`` (how rows are batched, not what they compute to),
    ``on_error`` (a failed run checkpoints no bad window, so "fail" then "skip" resumes),
    and engine options (batching and threads).
    """
    from ..config import ModelConfig

    fin, fout = spec.formats()
    path = os.path.abspath(spec.input) if spec.input != "-" else "-"
    stat = os.stat(spec.input) if spec.input != "-" else None
    keys = set(ModelConfig.__dataclass_fields__) - {"served_model_name"}
    model = {k: v for k, v in spec.model_options.items() if k in keys}
    task = dataclasses.asdict(spec.options)
    task.pop("chunk")
    fp = {
        "version": VERSION,
        "input": path,
        "input_size": stat.st_size if stat else None,
        "input_mtime_ns": stat.st_mtime_ns if stat else None,
        "input_format": fin,
        "output_format": fout,
        "fields": spec.fields,
        "window": spec.window,
        "task": task,
        "model": model,
    }
    return json.loads(json.dumps(fp, default=str, sort_keys=True))  # as it reads back


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Parts:
    """The ``OUT.parts/`` checkpoint: fingerprint, shards, errors sidecars."""

    def __init__(self, output: str, fmt: str) -> None:
        self.out = Path(output)
        self.dir = Path(output + ".parts")
        self.fmt = fmt

    def shard(self, index: int) -> Path:
        return self.dir / f"{index:08d}.{self.fmt}"

    def sidecar(self, index: int) -> Path:
        return self.dir / f"{index:08d}.errors.jsonl"

    def open(self, fp: dict[str, Any], restart: bool) -> dict[str, Any]:
        """Validate or create the checkpoint; return its contents."""
        for trash in self.dir.parent.glob(f"{self.dir.name}.trash-*"):
            shutil.rmtree(trash, ignore_errors=True)  # a cleanup that was killed
        state = self._read()
        if state is not None and state.get("fingerprint") != fp:
            # A checkpoint without a finished window has nothing to lose: replace it.
            if not restart and self.done():
                raise JobError(self._refusal(state.get("fingerprint") or {}, fp))
            state = None
        if state is None:
            self.discard()
            self.dir.mkdir(parents=True)
            state = {"fingerprint": fp, "windows": None, "rows": None}
            self.save(state)
        for stray in self.dir.glob(".*.tmp-*"):
            stray.unlink(missing_ok=True)
        return state

    def _read(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.dir / CHECKPOINT).read_bytes()))
        except (OSError, ValueError):
            return None  # no checkpoint: anything in the directory is unusable

    def _refusal(self, old: dict[str, Any], new: dict[str, Any]) -> str:
        changed = [
            f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
        return (
            f"{self.dir} holds a checkpoint of a different job; changed: "
            + "; ".join(changed)
            + ". Run again with the same arguments to resume, or pass --restart to discard it."
        )

    def save(self, state: dict[str, Any]) -> None:
        _atomic_write(self.dir / CHECKPOINT, lambda p: p.write_text(json.dumps(state, indent=1)))

    def done(self) -> set[int]:
        return {int(p.stem) for p in self.dir.glob(f"*.{self.fmt}") if p.stem.isdigit()}

    def write(self, result: WindowResult, task: str, labels: Any) -> None:
        """Checkpoint one window: sidecar first, then the shard that marks it done."""
        if result.errors:
            lines = list(files.error_rows(result))
            _atomic_write(self.sidecar(result.index), lambda p: p.write_bytes(b"".join(lines)))
        _atomic_write(
            self.shard(result.index),
            lambda p: files.write_shard(p, self.fmt, result, task, labels),
        )

    def finish(self, count: int, row_shape: tuple[int, ...]) -> int:
        """Merge shards 0..count-1 into OUT (and OUT.errors.jsonl); return failed rows."""
        missing = [k for k in range(count) if not self.shard(k).exists()]
        if missing:
            raise RuntimeError(f"windows {missing[:10]} were never computed")
        shards = [self.shard(k) for k in range(count)]
        sidecars = [self.sidecar(k) for k in range(count) if self.sidecar(k).exists()]
        report = Path(str(self.out) + ".errors.jsonl")
        failed = 0
        for s in sidecars:
            with open(s, "rb") as f:
                failed += sum(1 for _ in f)
        if sidecars:
            _atomic_write(report, lambda p: files.merge(sidecars, "jsonl", str(p), ()))
        else:
            report.unlink(missing_ok=True)  # a stale report of an earlier job
        _atomic_write(self.out, lambda p: files.merge(shards, self.fmt, str(p), row_shape))
        self.discard()
        return failed

    def discard(self) -> None:
        if self.dir.exists():
            trash = self.dir.with_name(f"{self.dir.name}.trash-{uuid.uuid4().hex[:8]}")
            os.replace(self.dir, trash)  # atomic: never a half-deleted checkpoint
            shutil.rmtree(trash, ignore_errors=True)


class Progress:
    """A tqdm bar on a terminal, else a log line every ~10 s; both on stderr."""

    def __init__(self, total: int | None, initial: int, enabled: bool) -> None:
        self.bar: Any = None
        self.total, self.count, self.start = total, initial, time.monotonic()
        self.initial, self.next_log = initial, self.start + LOG_EVERY_S
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="rows", file=sys.stderr)

    def update(self, n: int) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (now := time.monotonic()) >= self.next_log:
            self.next_log = now + LOG_EVERY_S
            rate = (self.count - self.initial) / (now - self.start)
            of = f"/{self.total}" if self.total else ""
            print(f"poolserve: {self.count}{of} rows, {rate:.0f} rows/s", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def report_errors(result: WindowResult) -> None:
    for row, message in result.errors.items():
        ident = result.ids[row - result.start] if result.ids is not None else None
        named = f" (id {ident!r})" if ident is not None else ""
        print(f"poolserve: row {row}{named}: {message}", file=sys.stderr)


class _Labels:
    """The classifier's label names, read from the model's config once, when needed."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec, self.loaded = spec, False
        self.value: list[str | None] | None = None

    def get(self) -> Any:
        if self.spec.options.task == "classify" and not self.loaded:
            self.value, self.loaded = model_info(self.spec)[0], True
        return self.value


def model_info(spec: JobSpec) -> tuple[list[str | None], int]:
    """(label names, embedding width) from the model's files, without loading weights."""
    from ..config import ModelConfig
    from ..models.spec import describe

    keys = ModelConfig.__dataclass_fields__
    info = describe(ModelConfig(**{k: v for k, v in spec.model_options.items() if k in keys})).info
    return list(info.labels), int(spec.options.dimensions or info.dimension)


def run_job(spec: JobSpec, compute: Compute) -> Summary:
    """Run (or resume) the job; raise :class:`JobError` on refusal or bad rows (fail)."""
    began = time.monotonic()
    fin, fout = spec.formats()
    if spec.on_error not in ("fail", "skip"):
        raise JobError(f"on_error must be 'fail' or 'skip', not {spec.on_error!r}")
    reader = files.WindowReader(spec.input, fin, spec.fields, spec.window)
    labels = _Labels(spec)
    if spec.output == "-":
        if fout != "jsonl":
            raise JobError(f"stdout (-o -) takes JSONL, not {fout}")
        return _stream(spec, compute, reader, labels, began)
    parts = Parts(spec.output, fout)
    # stdin cannot be fingerprinted: its jobs always start over.
    state = parts.open(fingerprint(spec), spec.restart or spec.input == "-")
    done = parts.done()
    computed = failed = 0
    if state["windows"] is None or not done.issuperset(range(state["windows"])):
        total = files.count_rows(spec.input, fin) if spec.progress else None
        resumed = min(len(done) * spec.window, total) if total is not None else 0
        progress = Progress(total, resumed, spec.progress)
        results = compute(reader.windows(done))
        last = -1
        try:
            with _closing(results):
                for result in results:
                    if result.index in done or result.index <= last:
                        raise RuntimeError(f"compute returned window {result.index} out of order")
                    last = result.index
                    if result.errors:
                        report_errors(result)
                        failed += len(result.errors)
                        if spec.on_error == "fail":
                            raise JobError(_fail_message(result, spec.output), code=1)
                    parts.write(result, spec.options.task, labels.get())
                    done.add(result.index)
                    computed += len(result.values)
                    progress.update(len(result.values))
        finally:
            progress.close()
        if reader.count is None:
            raise RuntimeError("compute stopped before the end of the input")
        state.update(windows=reader.count, rows=reader.rows)
        parts.save(state)
    row_shape = _row_shape(spec) if not state["windows"] else ()
    failed = parts.finish(int(state["windows"]), row_shape)
    return Summary(int(state["rows"]), computed, failed, time.monotonic() - began)


@contextlib.contextmanager
def _closing(results: Iterator[WindowResult]) -> Iterator[None]:
    """Close a generator ``compute`` (its engine, its actors) when the job stops early."""
    try:
        yield
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _fail_message(result: WindowResult, output: str) -> str:
    rows = list(result.errors)
    first = rows[0]
    more = f" (and {len(rows) - 1} more bad rows in this window)" if len(rows) > 1 else ""
    return (
        f"row {first}: {result.errors[first]}{more}; stopped. Finished windows are "
        f"checkpointed in {output}.parts: fix the input and rerun, or rerun with "
        "--on-error skip to keep going past bad rows."
    )


def _row_shape(spec: JobSpec) -> tuple[int, ...]:
    """A row's shape for an output with no rows at all."""
    if spec.options.task == "score":
        return ()
    labels, width = model_info(spec)
    return (len(labels),) if spec.options.task == "classify" else (width,)


def _stream(
    spec: JobSpec, compute: Compute, reader: files.WindowReader, labels: _Labels, began: float
) -> Summary:
    """``-o -``: JSONL on stdout as windows finish; no checkpoint (nothing to resume)."""
    out = sys.stdout.buffer
    rows = failed = 0
    results = compute(reader.windows())
    with _closing(results):
        for result in results:
            if result.errors:
                report_errors(result)
                failed += len(result.errors)
                if spec.on_error == "fail":
                    raise JobError(_fail_message(result, "(stdout)"), code=1)
            out.writelines(files.jsonl_rows(result, spec.options.task, labels.get()))
            out.flush()
            rows += len(result.values)
    return Summary(rows, rows, failed, time.monotonic() - began)
