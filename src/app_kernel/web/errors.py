"""Turn exceptions nobody handled into a logged 500 problem (503 for a failed backend)."""

from __future__ import annotations

from app_kernel.errors import BackendUnavailable
from app_kernel.observability.logging import get_logger
from app_kernel.types import ASGIApp, Message, Receive, Scope, Send
from app_kernel.web.problems import backend_unavailable_response, problem_response

__all__ = ("UnhandledErrorMiddleware",)

_log = get_logger("app_kernel.errors")


class UnhandledErrorMiddleware:
    """Log an unhandled exception with its traceback and answer 500.

    The answer never carries internals; in debug mode it adds the exception's
    type and text. If the response had already started, the exception is
    re-raised so the server aborts the connection rather than pretending the
    truncated response was complete.

    A :class:`~app_kernel.errors.BackendUnavailable` raised outside the
    routes (by a middleware asking Redis, say) is answered 503 with
    ``Retry-After``, as the routes' own handler answers it.
    """

    def __init__(self, app: ASGIApp, *, debug: bool = False) -> None:
        self.app = app
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BackendUnavailable as exc:
            if started:
                raise
            await backend_unavailable_response(scope, exc)(scope, receive, send)
        except Exception as exc:
            _log.exception("unhandled exception", path=scope.get("path"))
            if started:
                raise
            detail = f"{type(exc).__name__}: {exc}" if self.debug else "An internal error occurred."
            await problem_response(scope, 500, detail=detail)(scope, receive, send)
