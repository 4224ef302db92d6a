"""What the request-context middleware tells the parts that watch every request.

HTTP metrics and request metrics each need the same few facts about a request
(when it started, its status, how long it took, the error body of a JSON
error). Rather than each wrapping the ASGI app, with a layer and a ``send``
wrapper of its own per request, they are :class:`RequestObserver` s of the one
request-context middleware, which gathers the facts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app_kernel.types import Scope

__all__ = ("MAX_ERROR_BODY", "RequestObserver", "RequestOutcome")

MAX_ERROR_BODY = 16 * 1024
"""Bytes of an error response body kept for observers that want it."""


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """How one HTTP request ended.

    Attributes:
        status: the response status; 500 when no response was started.
        seconds: server time from the request to the end of its response.
        started_at: wall-clock time (``time.time()``) the request arrived.
        error_body: the first :data:`MAX_ERROR_BODY` bytes of a 4xx/5xx response
            with a JSON content type, when an observer asked for it; else None.
    """

    status: int
    seconds: float
    started_at: float
    error_body: bytes | None = None


class RequestObserver(Protocol):
    """**Protocol**: told when each HTTP request starts and ends.

    Both methods run on the event loop in the request's own context (its
    request id is current) and must not block. An exception is logged and
    never reaches the client.
    """

    wants_error_body: bool
    """Keep the error body of JSON 4xx/5xx responses for :meth:`finished`."""

    def started(self, scope: Scope) -> None:
        """The request arrived (before any other kernel layer saw it)."""

    def finished(self, scope: Scope, outcome: RequestOutcome) -> None:
        """The response was sent, or the app raised."""
