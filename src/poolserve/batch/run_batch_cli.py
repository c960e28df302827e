"""``poolserve run-batch -i IN -o OUT``: an OpenAI/vLLM batch file (JSONL) answered offline
by the same engine and app as ``poolserve serve`` (run_batch.py answers the lines).

Promises:

- Exit 0 once every line of the input has its output line, however many of them are
  errors; 1 when the input cannot be read, the output cannot be written, the model cannot
  load or the engine dies; 130 on Ctrl-C, 143 on SIGTERM.
- OUT appears only complete: answers go to a temporary file (next to OUT, or in
  ``--output-tmp-dir``) that is renamed onto OUT at the end; a run that fails or is
  killed leaves OUT as it was. ``-`` streams to stdout instead, each line as it is ready.
- IN and OUT may be http(s) URLs, as with vLLM: IN is streamed with a GET, OUT is staged
  and uploaded with one PUT at the end.
- Progress on stderr: a tqdm bar on a terminal, else a log line every ~10 s; then one
  summary line (lines, ok, failed, seconds, lines/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any, BinaryIO, cast
from urllib.parse import urlparse

from ..config import Config, EngineConfig, ModelConfig
from ..flags import add_dataclass_flags, config_from

log = logging.getLogger("poolserve.batch")

# Seconds between progress log lines when stderr is not a terminal.
LOG_EVERY = 10.0
# Upload attempts for an http(s) output, and the pause between them.
UPLOAD_TRIES, UPLOAD_PAUSE = 3, 5.0


def add_parser(sub: Any) -> None:
    """Add ``run-batch`` to the ``poolserve`` sub-parsers ``sub``."""
    cmd = sub.add_parser(
        "run-batch",
        help="Answer an OpenAI/vLLM batch file (JSONL) offline, as the server would.",
        description="Answer each line of an OpenAI/vLLM batch file ({custom_id, method, "
        "url, body}) with the server's own answer for that POST, on the same engine, and "
        "write one output line per request in input order (docs/run-batch.md).",
    )
    cmd.add_argument(
        "-i", "--input-file", required=True, help="Batch file (JSONL): a path, an http(s) URL, "
        "or - for stdin."
    )  # fmt: skip
    cmd.add_argument(
        "-o", "--output-file", required=True, help="Where the answers go: a path (written "
        "whole at the end), an http(s) URL (uploaded with PUT), or - for stdout."
    )  # fmt: skip
    cmd.add_argument(
        "--output-tmp-dir",
        default=None,
        help="Directory for the unfinished output (default: next to the output file; the "
        "system temporary directory for a URL).",
    )
    cmd.add_argument(
        "--max-inflight",
        "--max-in-flight",
        type=_positive_int,
        default=None,
        help="Lines with the engine at once (vLLM's flag). Default: twice --max-num-seqs "
        "on a GPU, 64 on a CPU. --max-queued-requests is raised to it if lower.",
    )
    cmd.add_argument(
        "--model",
        dest="batch_model",
        default=None,
        help="The model, as vLLM's run-batch takes it (same as the positional MODEL).",
    )
    add_dataclass_flags(cmd, ModelConfig, "model")
    add_dataclass_flags(cmd, EngineConfig, "engine")
    cmd.set_defaults(handler=run_batch_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _is_url(name: str) -> bool:
    return urlparse(name).scheme in ("http", "https")


def batch_config(args: argparse.Namespace) -> tuple[Config, int | None]:
    """The Config to load, and ``--max-inflight`` (the admission limit raised to fit it,
    since a 429 could only be written out as a failed line)."""
    config = config_from(args, ("model", "engine"))
    if args.batch_model is not None:
        if config.model.model not in (None, args.batch_model):
            raise SystemExit("poolserve run-batch: give the model once (MODEL or --model)")
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, model=args.batch_model)
        )
    engine = config.engine
    if args.max_inflight and args.max_inflight > engine.max_queued_requests:
        engine = dataclasses.replace(engine, max_queued_requests=args.max_inflight)
        config = dataclasses.replace(config, engine=engine)
    if engine.data_parallel_size > 1:
        log.warning("run-batch runs one engine in this process; ignoring --data-parallel-size")
    return config, args.max_inflight


def default_inflight(device: str, max_num_seqs: int) -> int:
    """Lines in flight when not given. On a GPU, two full batches (one computing, the next
    one formed). On a CPU a forward takes far fewer rows, and a longer queue only costs
    scheduling (2 cores, a tiny model: ~1,300 lines/s at 64 in flight, ~900 at 512)."""
    return 2 * max_num_seqs if device.startswith("cuda") else min(64, 2 * max_num_seqs)


def open_input(name: str) -> BinaryIO:
    """The input as a binary stream: stdin, a GET of an http(s) URL, or a local file."""
    if name == "-":
        # Unbuffered on the descriptor: a read blocked on an idle stdin must not hold the
        # lock of sys.stdin's buffer, which the interpreter takes when it exits.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
        return sys.stdin.buffer
    if _is_url(name):
        return cast(BinaryIO, urllib.request.urlopen(name, timeout=300))
    return open(name, "rb")


class Output:
    """The output: stdout (flushed per line), or a temporary file that :meth:`commit`
    renames onto the path (or uploads to the URL) and :meth:`discard` removes."""

    def __init__(self, name: str, tmp_dir: str | None = None) -> None:
        self.name = name
        self.tmp: str | None = None
        self.stream: BinaryIO
        if name == "-":
            self.stream = sys.stdout.buffer
            return
        if _is_url(name):
            directory = tmp_dir or tempfile.gettempdir()
            base = "run-batch-output.jsonl"
        else:
            if os.path.isdir(name):
                raise IsADirectoryError(f"the output {name} is a directory")
            directory = tmp_dir or os.path.dirname(os.path.abspath(name))
            base = os.path.basename(name)
        self.tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.part")
        # os.open with 0o666: the umask applies, so OUT gets the mode a plain open gives.
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.stream = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, line: bytes) -> None:
        self.stream.write(line)
        if self.tmp is None:  # a reader of the pipe sees each answer when it is ready
            self.stream.flush()

    def commit(self) -> None:
        self.stream.flush()
        if self.tmp is None:
            return
        os.fsync(self.stream.fileno())
        self.stream.close()
        if _is_url(self.name):
            _upload(self.tmp, self.name)
            os.unlink(self.tmp)
        else:
            _move(self.tmp, self.name)
        self.tmp = None

    def discard(self) -> None:
        if self.tmp is None:
            return
        with contextlib.suppress(OSError):
            self.stream.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)
        self.tmp = None


def _move(src: str, dest: str) -> None:
    """Rename ``src`` onto ``dest``; across file systems, copy next to ``dest`` first so
    the final step is still one rename."""
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staged = f"{dest}.{secrets.token_hex(4)}.part"
        try:
            shutil.copyfile(src, staged)
            os.replace(staged, dest)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        os.unlink(src)


def _upload(path: str, url: str) -> None:
    """PUT the file at ``path`` to ``url``, retrying; OSError when every try fails."""
    size = os.path.getsize(path)
    for attempt in range(1, UPLOAD_TRIES + 1):
        try:
            with open(path, "rb") as body:
                request = urllib.request.Request(
                    url,
                    data=body,
                    method="PUT",
                    headers={"Content-Length": str(size), "Content-Type": "application/jsonl"},
                )
                with urllib.request.urlopen(request, timeout=1000):
                    return  # urlopen raises for a status outside 2xx/3xx
        except OSError as exc:
            if attempt == UPLOAD_TRIES:
                raise OSError(f"uploading the output to {url} failed: {exc}") from exc
            log.warning("uploading the output failed (%s); retrying", exc)
            time.sleep(UPLOAD_PAUSE)


class InputError(Exception):
    """The input could not be read (the run stops, exit 1)."""


async def _chunks(stream: BinaryIO, size: int, ahead: int = 4) -> AsyncIterator[bytes]:
    """The stream's bytes, read on a daemon thread at most ``ahead`` chunks ahead: a slow
    pipe never stalls the answers in flight, and a read blocked on an idle stdin never
    keeps an interrupted run from exiting (a worker-pool thread would be joined)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()
    room = threading.Semaphore(ahead)
    read = getattr(stream, "read1", None) or stream.read

    def reader() -> None:
        item: bytes | Exception = b"x"
        while item and not isinstance(item, Exception):
            room.acquire()
            try:
                item = read(size)
            except Exception as exc:
                item = exc
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the run is over
                return

    threading.Thread(target=reader, name="run-batch-reader", daemon=True).start()
    while True:
        item = await queue.get()
        room.release()
        if isinstance(item, Exception):
            raise InputError(f"cannot read the input: {item}") from item
        if not item:
            return
        yield item


async def read_lines(
    stream: BinaryIO, max_line_bytes: int, chunk_size: int = 1 << 20
) -> AsyncIterator[tuple[int, bytes | None]]:
    """(line number, line) for each non-blank line of ``stream``, split on ``\\n`` only
    (JSON allows a bare ``\\r`` as whitespace); a line over ``max_line_bytes`` comes as
    None, skipped to its end without being held. A UTF-8 byte-order mark is dropped."""
    parts: list[bytes] = []
    size, line_no, too_long, first = 0, 0, False, True
    async for data in _chunks(stream, chunk_size):
        chunk, first = (data.removeprefix(b"\xef\xbb\xbf") if first else data), False
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not too_long:
                size += len(piece)
                too_long = size > max_line_bytes
                if too_long:
                    parts = []  # skipped to its end, never held
                else:
                    parts.append(piece)
            if end < 0:
                break
            start, line_no = end + 1, line_no + 1
            line = b"".join(parts)
            if too_long or line.strip():
                yield line_no, None if too_long else line
            parts, size, too_long = [], 0, False
    if too_long or any(p.strip() for p in parts):
        yield line_no + 1, None if too_long else b"".join(parts)


def _count_lines(name: str) -> int | None:
    """Lines of a local regular file (blank ones included), for the bar's total."""
    if name == "-" or _is_url(name) or not os.path.isfile(name):
        return None
    count, last = 0, b"\n"
    with open(name, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


class Progress:
    """``__call__(ok)`` after each written line: a tqdm bar on a terminal, else a log
    line every LOG_EVERY seconds."""

    def __init__(self, total: int | None, tty: bool) -> None:
        self.done = 0
        self.started = time.monotonic()
        self.next_log = self.started + LOG_EVERY
        self.bar: Any = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="line", desc="run-batch", file=sys.stderr)

    def __call__(self, ok: bool) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
            return
        now = time.monotonic()
        if now >= self.next_log:
            rate = self.done / (now - self.started)
            log.info("run-batch: %d lines done (%.1f lines/s)", self.done, rate)
            self.next_log = now + LOG_EVERY

    def close(self) -> None:
        if self.bar is not None:
            self.bar.total = self.bar.n  # the count included blank lines
            self.bar.close()


async def _run(
    config: Config, source: BinaryIO, output: Output, max_inflight: int | None, total: int | None
) -> tuple[Any, float]:
    """Load the model, then answer the batch (under a SIGTERM that cancels the run):
    the Stats, and the seconds the answering took."""
    from ..runtime import build_context
    from .run_batch import MAX_LINE_BYTES, run_batch

    ctx = build_context(config)
    max_inflight = max_inflight or default_inflight(ctx.info.device, config.engine.max_num_seqs)
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    on_main = threading.current_thread() is threading.main_thread()
    if on_main and task is not None:  # a SIGTERM cancels the run: no OUT, exit 143
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    progress = Progress(total, sys.stderr.isatty())
    access = logging.getLogger("poolserve.access")
    level = access.level
    access.setLevel(logging.WARNING)  # not one access-log line per batch line
    started = time.monotonic()
    try:
        lines = read_lines(source, MAX_LINE_BYTES)
        stats = await run_batch(
            ctx, lines, output.write, max_inflight=max_inflight, on_line=progress
        )
        return stats, time.monotonic() - started
    finally:
        access.setLevel(level)
        progress.close()
        if on_main:
            loop.remove_signal_handler(signal.SIGTERM)


def run_batch_command(args: argparse.Namespace) -> int:
    """The ``run-batch`` handler: exit code as the module docstring promises."""
    from .run_batch import EngineDied

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config, max_inflight = batch_config(args)
    try:
        source = open_input(args.input_file)
    except (OSError, ValueError) as exc:
        print(f"poolserve: error: cannot read {args.input_file}: {exc}", file=sys.stderr)
        return 1
    try:
        output = Output(args.output_file, args.output_tmp_dir)
    except OSError as exc:
        source.close()
        print(f"poolserve: error: cannot write {args.output_file}: {exc}", file=sys.stderr)
        return 1
    total = _count_lines(args.input_file) if sys.stderr.isatty() else None
    try:
        stats, seconds = asyncio.run(_run(config, source, output, max_inflight, total))
        output.commit()
    except (InputError, EngineDied, OSError) as exc:
        print(f"poolserve: error: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:  # SIGTERM
        print("poolserve: run-batch terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("poolserve: run-batch interrupted", file=sys.stderr)
        return 130
    finally:
        output.discard()
        if source is not sys.stdin.buffer:
            source.close()
    print(
        f"poolserve run-batch: {stats.lines} lines, {stats.ok} ok, {stats.failed} failed "
        f"in {seconds:.1f} s ({stats.lines / max(seconds, 1e-9):.1f} lines/s) "
        f"-> {args.output_file}",
        file=sys.stderr,
    )
    return 0
