"""The one exception tree of poolserve.

Every error a request can meet is a :class:`PoolserveError`; ``api/`` maps it to an
HTTP answer in the OpenAI error shape in one place, using the class attributes
``status`` and ``error_type``. Start-up problems are :class:`ModelLoadError`.
"""

from __future__ import annotations


class PoolserveError(Exception):
    """Base of every poolserve error; ``status`` and ``error_type`` drive the HTTP answer."""

    status: int = 500
    error_type: str = "InternalServerError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(PoolserveError, ValueError):
    """The request is malformed or asks for something the model cannot do (400).

    Also a ``ValueError``: what vLLM's offline API raises for bad input, so scripts that
    catch it keep working with :class:`poolserve.LLM`.
    """

    status = 400
    error_type = "BadRequestError"


class ModelNotFound(PoolserveError):
    """The request names a model this server does not serve (404)."""

    status = 404
    error_type = "NotFoundError"


class RouteNotFound(PoolserveError):
    """No such route (404)."""

    status = 404
    error_type = "NotFoundError"


class MethodNotAllowed(PoolserveError):
    """The route exists but not with this HTTP method (405)."""

    status = 405
    error_type = "BadRequestError"


class Unauthorized(PoolserveError):
    """Missing, malformed or wrong API key (401)."""

    status = 401
    error_type = "AuthenticationError"


class RequestTooLarge(PoolserveError):
    """The body, or the number of inputs, is over a configured limit (413)."""

    status = 413
    error_type = "RequestTooLarge"


class Overloaded(PoolserveError):
    """The admission queue is full; retry later (429)."""

    status = 429
    error_type = "Overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(PoolserveError):
    """The engine is stopped, stopping or dead (503)."""

    status = 503
    error_type = "Overloaded"


class RequestTimeout(PoolserveError):
    """The request ran past ``--request-timeout``; its queued work was dropped (504)."""

    status = 504
    error_type = "RequestTimeout"


class RequestReadTimeout(PoolserveError):
    """The client sent its request head or body too slowly (408; the connection closes).

    Sent by the connection layer (``api/connections.py``), never by a handler.
    """

    status = 408
    error_type = "RequestTimeout"


class TooManyConnections(PoolserveError):
    """The process holds ``--max-connections`` open connections; a new one gets this (503)."""

    status = 503
    error_type = "Overloaded"


class ClientClosedRequest(PoolserveError):
    """The client went away before the request was read or answered (499, never sent)."""

    status = 499
    error_type = "ClientClosedRequest"


class InternalError(PoolserveError):
    """A fault inside poolserve, e.g. the model's forward raised (500)."""

    status = 500
    error_type = "InternalServerError"


class ModelLoadError(Exception):
    """The model could not be found, fetched or understood at start-up.

    Its message is one line meant for the user; the CLI prints it without a traceback.
    """
