"""Answer an OpenAI/vLLM batch file (JSONL) with the HTTP server's own app, in-process.

Promises (docs/run-batch.md has the file format):

- Each request line is answered by POSTing its ``body``, byte for byte as it stands in
  the line, to its ``url`` on the ASGI app ``poolserve serve`` runs (``create_app``), so
  the line's ``response.body`` is exactly what the server would answer, error answers
  included. This module answers only what never reaches the app (a line that is not
  JSON, lacks a field, or is not a POST) and a binary answer, which a JSONL file cannot
  hold.
- One output line per non-blank input line, in input order, each written as soon as it
  and every line before it are answered.
- Memory stays flat however long the input: it is read in chunks as needed, at most
  ``max_inflight`` lines are with the app at once, and at most ``window`` lines are read
  but not yet written.
- Only unreadable input, an unwritable output or a dead engine stop a run; every other
  problem is one line's error answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..api.app import create_app
from ..api.errors import error_body
from ..config import ServerConfig
from ..serving.context import ServingContext

Answer = tuple[bytes, bool]  # (output line with its newline, answered with a status < 400)

# A line's JSON is read with the standard library's decoder: it hands back where each
# value ends, so the body can go to the app as the exact bytes of the line.
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


class EngineDied(Exception):
    """The engine stopped mid-run: every later line would only be a 503 (exit 1)."""


class LineError(Exception):
    """A line that never reaches the app; answered with ``status`` and ``message``."""

    def __init__(
        self, status: int, message: str, param: str | None = None, custom_id: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.custom_id = custom_id


@dataclass(frozen=True)
class BatchRequest:
    """One input line, checked: where to POST which bytes, and whose answer it is."""

    custom_id: str
    path: str
    query: str
    body: bytes


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _str(fields: dict[str, Any]) -> str | None:
    """The line's ``custom_id`` when it is a string (else an error line has none)."""
    value = fields.get("custom_id")
    return value if isinstance(value, str) else None


def _split_object(text: str) -> tuple[dict[str, Any], str | None]:
    """The line's top-level fields (``body`` excluded) and the body's raw JSON text.

    Raises LineError (400) for anything but one JSON object, or a repeated key (refused
    as the server refuses it in a body: which one wins is undefined).
    """
    fields: dict[str, Any] = {}
    body: str | None = None
    try:
        pos = _skip_ws(text, 0)
        if text[pos : pos + 1] != "{":
            json.loads(text)  # which is it: not JSON, or JSON but not an object?
            raise LineError(400, "the line is not a JSON object")
        pos = _skip_ws(text, pos + 1)
        closed = text[pos : pos + 1] == "}"
        if closed:
            pos += 1
        while not closed:
            if text[pos : pos + 1] != '"':
                raise json.JSONDecodeError("Expecting property name", text, pos)
            key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
            start = _skip_ws(text, pos + 1)
            value, pos = _DECODER.raw_decode(text, start)
            if key in fields or (key == "body" and body is not None):
                raise LineError(400, f"the line repeats the key {key!r}", custom_id=_str(fields))
            if key == "body":
                body = text[start:pos]
            else:
                fields[key] = value
            pos = _skip_ws(text, pos)
            closed = text[pos : pos + 1] == "}"
            if not closed and text[pos : pos + 1] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos = _skip_ws(text, pos + 1)
        if pos != len(text):
            raise json.JSONDecodeError("Extra data", text, pos)
    except json.JSONDecodeError as exc:
        message = f"the line is not valid JSON: {exc}"
        raise LineError(400, message, custom_id=_str(fields)) from exc
    except RecursionError as exc:
        raise LineError(400, "the line nests JSON too deeply") from exc
    return fields, body


def parse_line(raw: bytes) -> BatchRequest:
    """Check one input line; LineError says what is wrong with it.

    ``method`` must be POST (405 otherwise, as the server answers a GET to a POST
    route); ``custom_id``, ``url`` and ``body`` must be there, ``url`` a path.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(400, f"the line is not valid UTF-8: {exc}") from exc
    fields, body = _split_object(text)
    custom_id = fields.get("custom_id")
    if not isinstance(custom_id, str):
        custom_id = None
        problem = "has no" if "custom_id" not in fields else "has a non-string"
        raise LineError(400, f"the line {problem} `custom_id`", "custom_id")
    method = fields.get("method")
    if not isinstance(method, str):
        raise LineError(400, "the line has no `method` (POST)", "method", custom_id)
    url = fields.get("url")
    if not isinstance(url, str) or not url.startswith("/"):
        what = "has no `url`" if url is None else "has a `url` that is not a path"
        raise LineError(400, f"the line {what} (such as /v1/embeddings)", "url", custom_id)
    if method.upper() != "POST":
        message = f"method {method} is not allowed on {url}: a batch line is a POST"
        raise LineError(405, message, "method", custom_id)
    if body is None:
        raise LineError(400, "the line has no `body`", "body", custom_id)
    path, _, query = url.partition("?")
    return BatchRequest(custom_id, path, query, body.encode("utf-8"))


def format_line(
    custom_id: str | None, status: int, request_id: str, body: bytes | None, failed: bool
) -> bytes:
    """One output line: ``{"id", "custom_id", "response": {"status_code", "request_id",
    "body"}, "error"}``; as vLLM writes them, a failed line's ``body`` is null and its
    ``error`` holds the error answer (the server's ``{"error": {...}}``).

    ``body`` is spliced in as it is (the app's JSON, never re-encoded).
    """
    body = b"null" if body is None else body
    head = json.dumps(
        {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id},
        separators=(",", ":"),
    ).encode("ascii")
    return b"".join(
        (
            head[:-1],
            b',"response":{"status_code":%d,"request_id":' % status,
            json.dumps(request_id).encode(),
            b',"body":',
            b"null" if failed else body,
            b'},"error":',
            body if failed else b"null",
            b"}\n",
        )
    )


def error_line(exc: LineError, request_id: str | None = None) -> bytes:
    """The line answering ``exc``; a line that never reached the app gets a fresh id."""
    rid = request_id or f"batch-{secrets.token_hex(8)}"
    body = error_body(exc.status, exc.message, param=exc.param)
    return format_line(exc.custom_id, exc.status, rid, body, True)


@contextlib.asynccontextmanager
async def app_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    """Run the app's ASGI lifespan (the engine starts, then stops); yield its state."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    reply = asyncio.ensure_future(outbox.get())
    await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
    if not reply.done() or reply.result()["type"] != "lifespan.startup.complete":
        reply.cancel()
        await task  # Starlette re-raises what failed the start-up
        raise RuntimeError(f"the app did not start: {reply.result() if reply.done() else ''}")
    try:
        yield state
    finally:
        inbox.put_nowait({"type": "lifespan.shutdown"})
        await task


async def post(app: Any, state: dict[str, Any], req: BatchRequest) -> tuple[int, str, str, bytes]:
    """POST ``req`` to the ASGI ``app``: (status, content type, X-Request-Id, body)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": req.body, "more_body": False})
    start: dict[str, Any] = {"status": 500}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": unquote(req.path),
        "raw_path": req.path.encode("utf-8"),
        "query_string": req.query.encode("utf-8"),
        "root_path": "",
        "headers": [
            (b"host", b"run-batch"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(req.body)),
        ],
        "client": ("127.0.0.1", 0),
        "server": ("run-batch", None),
        "state": dict(state),
    }
    # After the body, receive() waits forever: this client never hangs up.
    await app(scope, inbox.get, send)
    headers = {k.lower(): v.decode("latin-1") for k, v in start.get("headers", ())}
    kind, rid = headers.get(b"content-type", ""), headers.get(b"x-request-id", "")
    return start["status"], kind, rid, b"".join(chunks)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class LineAnswerer:
    """Turns one input line into its output line through the app; ``engine_alive``
    tells a dead engine's 503s (the run stops) from a line's own."""

    def __init__(self, app: Any, state: dict[str, Any], engine_alive: Callable[[], bool]) -> None:
        self.app = app
        self.state = state
        self.engine_alive = engine_alive

    async def __call__(self, line_no: int, raw: bytes | None) -> Answer:
        if raw is None:
            message = f"line {line_no} is over {MAX_LINE_BYTES} bytes"
            return error_line(LineError(413, message)), False
        try:
            req = parse_line(raw)
        except LineError as exc:
            exc.message = f"line {line_no}: {exc.message}"
            return error_line(exc), False
        try:
            status, content_type, rid, body = await post(self.app, self.state, req)
        except Exception as exc:  # the app answers its own errors; this is a last resort
            body = error_body(500, f"internal error ({type(exc).__name__})")
            status, content_type, rid = 500, "application/json", ""
        if status >= 500 and not self.engine_alive():
            raise EngineDied(f"the engine stopped (line {line_no} was answered {status})")
        rid = rid or f"batch-{secrets.token_hex(8)}"
        if body and not _is_json(content_type):
            # vLLM's binary embeddings (encoding_format bytes/bytes_only): no JSON to file.
            message = (
                f"line {line_no}: the answer is {content_type or 'not JSON'}; a batch file "
                "holds JSON answers only (ask for encoding_format float or base64)"
            )
            err = LineError(400, message, "encoding_format", req.custom_id)
            return error_line(err, rid), False
        if b"\n" in body or b"\r" in body:  # one answer per line, whatever the route wrote
            body = json.dumps(json.loads(body), separators=(",", ":")).encode("utf-8")
        failed = status >= 400
        return format_line(req.custom_id, status, rid, body or None, failed), not failed


async def run_ordered(
    lines: AsyncIterator[tuple[int, bytes | None]],
    answer: Callable[[int, bytes | None], Awaitable[Answer]],
    write: Callable[[bytes, bool], None],
    *,
    max_inflight: int,
    window: int,
) -> None:
    """Answer ``lines`` concurrently, at most ``max_inflight`` at once and at most
    ``window`` (>= max_inflight) read but unwritten; ``write(line, ok)`` in input order.

    The first exception (a write that fails, a dead engine) stops the run: the lines in
    flight are finished or cancelled, nothing more is written, and it is re-raised.
    """
    window = max(window, max_inflight)
    running = asyncio.Semaphore(max_inflight)
    room = asyncio.Semaphore(window)
    finished: dict[int, Answer] = {}
    next_out = 0
    failures: list[BaseException] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, line_no: int, raw: bytes | None) -> None:
        nonlocal next_out
        try:
            try:
                finished[index] = await answer(line_no, raw)
            finally:
                running.release()
            while not failures and next_out in finished:
                write(*finished.pop(next_out))
                next_out += 1
                room.release()
        except BaseException as exc:
            failures.append(exc)
            room.release()  # the reading loop may wait for a slot this line holds
            if isinstance(exc, asyncio.CancelledError):
                raise

    try:
        index = 0
        async for line_no, raw in lines:
            await room.acquire()
            await running.acquire()
            if failures:
                break
            task = asyncio.create_task(one(index, line_no, raw))
            index += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks and not failures:
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
        if failures:
            raise failures[0]
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Stats:
    """What a run did: non-blank lines answered, those answered below 400, the rest."""

    lines: int = 0
    ok: int = 0
    failed: int = 0


# The app's settings: the server's defaults where they shape answers (the body limit),
# none of what guards a public port (keys, CORS, the held-bytes cap: the in-flight
# window bounds a run's memory).
SERVER = ServerConfig(allowed_origins=(), max_inflight_bytes=sys.maxsize)
# Longest input line read: a body may be max_request_bytes (the app 413s it), the
# envelope a little more. Longer lines are skipped unread and answered 413.
MAX_LINE_BYTES = SERVER.max_request_bytes + (1 << 20)


async def run_batch(
    ctx: ServingContext,
    lines: AsyncIterator[tuple[int, bytes | None]],
    write: Callable[[bytes], None],
    *,
    max_inflight: int,
    window: int | None = None,
    on_line: Callable[[bool], None] | None = None,
) -> Stats:
    """Answer ``lines`` ((line number, line or None when over MAX_LINE_BYTES)) with
    ``ctx``'s app, started and stopped here; ``write`` gets the output lines in input
    order, then ``on_line(ok)`` is called.

    ``max_inflight`` is capped at the engine's ``max_queued_requests`` (past it the app
    would answer 429s); ``window`` defaults to 4 x max_inflight, so a slow line lets that
    many behind it finish before the reading waits for it.
    """
    max_inflight = max(1, min(max_inflight, ctx.engine.max_queued_requests))
    stats = Stats()

    def written(line: bytes, ok: bool) -> None:
        write(line)
        stats.lines += 1
        stats.ok += ok
        stats.failed += not ok
        if on_line is not None:
            on_line(ok)

    app = create_app(ctx, SERVER)
    async with app_lifespan(app) as state:
        answer = LineAnswerer(app, state, lambda: ctx.engine.alive)
        window = window or 4 * max_inflight
        await run_ordered(lines, answer, written, max_inflight=max_inflight, window=window)
    return stats
