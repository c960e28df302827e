"""Connection hygiene for uvicorn: read deadlines, idle keep-alive and a connection cap.

uvicorn (0.54, httptools) reads a request for as long as its client cares to take: a
client trickling its request head, or declaring a longer body than it sends, holds its
connection (and a file descriptor) forever, and a new connection never times out before
its first byte. :class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol with
one timer per connection, armed on phase changes (never per byte):

- ``head``: a new connection must deliver its whole request head within
  ``header_timeout`` seconds of opening; on a kept-alive connection the clock starts
  at the next request's first byte. Past it: ``408`` in the error shape when a request
  had begun (a silent close when nothing came, as nginx and Apache do), then close;
- ``body``: once the head is in, the whole body within ``body_timeout`` seconds (a
  stalled or lying ``Content-Length`` body): ``408`` if no answer has started, then
  close. The app sees ``http.disconnect`` at once, so its handler ends as for a
  client that left (recorded as 499);
- ``idle``: after an answer, a kept-alive connection that starts no new request within
  ``timeout_keep_alive`` (uvicorn's own flag) is closed. Unlike uvicorn's timer, stray
  bytes that begin no request do not restart it;
- none while the app answers (``--request-timeout`` governs that).

Past ``max_connections`` open connections in the process, a new connection is answered
``503`` (error shape, ``Connection: close``) and closed at once. Closing after an
answer is "lingering": the answer is followed by a FIN, what the client still sends is
read and dropped, and the socket is released when the client closes or after
:data:`LINGER_SECONDS`, so the answer is read rather than lost to a reset.

:func:`uvicorn_options` turns a :class:`~poolserve.config.ServerConfig` into the
``uvicorn.run``/``uvicorn.Config`` keyword arguments for all of this.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..errors import PoolserveError, RequestReadTimeout, TooManyConnections
from .admission import CONNECTIONS, Counts
from .errors import error_body

if TYPE_CHECKING:
    from uvicorn.config import Config as UvicornConfig
    from uvicorn.server import ServerState

    from ..config import ServerConfig

log = logging.getLogger("poolserve.connections")

# How long a connection being closed after an answer may take to read it (and close).
LINGER_SECONDS = 1.0
# At most this many refused connections linger at once; past it they close outright.
MAX_LINGERING = 256
# --max-connections by default: the open-file limit less this (the process's own files,
# lingering refusals) ...
FD_HEADROOM = 256
# ... and at most this many: far more clients than an embedding server can keep busy.
DEFAULT_MAX_CONNECTIONS = 4096
# A flood of refusals logs one warning per this many seconds.
WARN_EVERY_SECONDS = 10.0

_HEAD = "head"
_BODY = "body"
_IDLE = "idle"
_LINGER = "linger"


def default_max_connections() -> int:
    """``min(RLIMIT_NOFILE soft limit - FD_HEADROOM, DEFAULT_MAX_CONNECTIONS)``, >= 16."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(soft - FD_HEADROOM, DEFAULT_MAX_CONNECTIONS))


class ConnectionPolicy:
    """The limits, and the per-process counters the connections of one server share.

    Picklable, so a server configuration holding it can be handed to another process;
    with shared ``counts`` (:class:`~poolserve.api.admission.SharedCounts`) the cap
    holds for all the front-end processes of a server together.
    """

    def __init__(
        self,
        header_timeout: float | None,
        body_timeout: float | None,
        max_connections: int | None,
        linger: float = LINGER_SECONDS,
        counts: Counts | None = None,
    ) -> None:
        self.header_timeout = header_timeout if header_timeout and header_timeout > 0 else None
        self.body_timeout = body_timeout if body_timeout and body_timeout > 0 else None
        self.max_connections = max_connections if max_connections and max_connections > 0 else None
        self.linger = linger
        # Open connections, shared by the front-end processes of one server when given.
        self.counts = counts if counts is not None else Counts()
        self.lingering = 0  # refused connections still open
        self.refused = 0  # refused since the last warning
        self._warned_at = float("-inf")

    def note_refusal(self, open_now: int) -> None:
        """Count a refusal; warn at most once per WARN_EVERY_SECONDS."""
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            log.warning(
                "refused %d connection(s): %d open, the limit (--max-connections)",
                self.refused,
                open_now,
            )
            self.refused = 0
            self._warned_at = now


def _answer(exc: PoolserveError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response in the error shape."""
    body = error_body(exc.status, exc.message, exc.error_type, exc.param)
    head = [STATUS_LINE[exc.status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(head)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a connection cap (module doc)."""

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        policy: ConnectionPolicy,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.policy = policy
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._in_message = False  # a request has begun and not been fully read
        self._head_done = False  # ... and its head is in
        self._closing = False  # answered and closing: what comes is dropped
        self._counted_lingering = False  # a refusal counted in policy.lingering
        self._upgraded = False
        self._counted = False  # counted in policy.counts (an open, admitted connection)

    # -- connection life -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self.policy.max_connections
        if not self.policy.counts.try_add(CONNECTIONS, 1, limit):
            self.transport = transport
            self.policy.note_refusal(self.policy.counts.get(CONNECTIONS))
            exc = TooManyConnections(
                f"the server holds {limit} open connections, its limit "
                "(--max-connections); retry later"
            )
            self._close_after(_answer(exc, self.server_state.default_headers), refusal=True)
            return
        self._counted = True
        super().connection_made(transport)
        self._update_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._counted:
            self._counted = False
            self.policy.counts.add(CONNECTIONS, -1)
        if self._counted_lingering:
            self._counted_lingering = False
            self.policy.lingering -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # answered already: read and drop
        super().data_received(data)
        self._update_deadline()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timer()
        self._upgraded = True  # the websocket protocol owns the transport from here
        super().handle_websocket_upgrade()

    # -- parser callbacks: only flags, the deadline follows after each feed ---------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._head_done = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The "idle" deadline replaces uvicorn's keep-alive timer (same timeout), which
        # stray bytes would cancel for good, and which a request whose answer came
        # before its body (an early 413/429) never re-arms.
        self._unset_keepalive_if_required()
        self._update_deadline()

    # -- deadlines -------------------------------------------------------------------

    def _wanted_phase(self) -> str | None:
        if self._in_message:
            return _BODY if self._head_done else _HEAD
        if self.cycle is None:
            return _HEAD  # a new connection: its first request head is due
        if not self.cycle.response_complete or self.pipeline:
            return None  # the app is answering
        return _IDLE

    def _update_deadline(self) -> None:
        if self._closing or self._upgraded or self.transport.is_closing():
            return
        phase = self._wanted_phase()
        if phase == self._phase:
            return  # the running deadline stands: progress within a phase buys no time
        self._cancel_timer()
        self._phase = phase
        if phase is None:
            return
        timeout = {
            _HEAD: self.policy.header_timeout,
            _BODY: self.policy.body_timeout,
            _IDLE: self.timeout_keep_alive,
        }[phase]
        if timeout is not None:
            self._timer = self.loop.call_later(timeout, self._expired, phase)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str) -> None:
        self._timer = None
        if phase == _LINGER:
            # The client neither closed nor read its answer: release the socket now.
            self.transport.abort()
            return
        if self.transport.is_closing():
            return
        if phase == _IDLE:
            self._close_after(None)
        elif phase == _HEAD:
            self._head_expired()
        elif phase == _BODY:
            self._body_expired()

    def _head_expired(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head trickles in while the previous request is answered: let
            # that answer finish, then close; read nothing more meanwhile.
            log.debug("%s: request head too slow (pipelined); closing after the answer", self)
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        if not self._in_message:
            log.debug("%s: no request within %s s; closing", self, self.policy.header_timeout)
            self._close_after(None)
            return
        log.debug("%s: request head too slow; 408", self)
        exc = RequestReadTimeout(
            f"the request head did not arrive within {self.policy.header_timeout:g} s "
            "(--header-timeout)"
        )
        self._close_after(_answer(exc, self.server_state.default_headers))

    def _body_expired(self) -> None:
        if self.flow.read_paused:
            # The server, not the client, holds the body up (the app reads it slowly,
            # or a pipelined request waits its turn): give the client its time again.
            self._phase = _BODY
            self._timer = self.loop.call_later(
                self.policy.body_timeout or 0.0, self._expired, _BODY
            )
            return
        cycle = self.cycle
        if cycle is None:
            self._close_after(None)
            return
        answer = None
        if not cycle.response_started and not self.pipeline:
            exc = RequestReadTimeout(
                f"the request body did not arrive within {self.policy.body_timeout:g} s "
                "(--body-timeout)"
            )
            answer = _answer(exc, self.server_state.default_headers)
        log.debug("%s: request body too slow; closing", self)
        # The app's next receive() is http.disconnect, and what it sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self._close_after(answer)

    def _close_after(self, answer: bytes | None, refusal: bool = False) -> None:
        """Write ``answer``, then close: gracefully (FIN, drain, linger) when possible."""
        transport = self.transport
        self._closing = True
        self._cancel_timer()
        if answer is not None:
            transport.write(answer)
        lingering = refusal and self.policy.lingering < MAX_LINGERING
        if answer is None or not transport.can_write_eof() or (refusal and not lingering):
            transport.close()
            return
        transport.write_eof()  # the answer, then FIN; the client's close ends it
        if self.flow is not None:
            self.flow.resume_reading()  # drain what the client still sends
        if refusal:
            self.policy.lingering += 1
            self._counted_lingering = True
        self._phase = _LINGER
        self._timer = self.loop.call_later(self.policy.linger, self._expired, _LINGER)

    def __repr__(self) -> str:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        return f"connection {client}"


def uvicorn_options(server: ServerConfig, counts: Counts | None = None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` about connections;
    ``counts``: the open-connection count shared by a server's front-end processes."""
    max_connections = server.max_connections
    if max_connections is None:
        max_connections = default_max_connections()
    policy = ConnectionPolicy(
        header_timeout=server.header_timeout,
        body_timeout=server.body_timeout,
        max_connections=max_connections,
        counts=counts,
    )
    return {
        # A class or any factory taking uvicorn's keyword arguments is accepted.
        "http": functools.partial(GuardedHttpToolsProtocol, policy=policy),
        "timeout_keep_alive": max(server.keep_alive_timeout, 0.0),
    }
