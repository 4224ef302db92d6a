"""Refuse request bodies over the configured size with 413."""

from __future__ import annotations

from starlette.exceptions import HTTPException

from app_kernel.types import ASGIApp, Message, Receive, Scope, Send
from app_kernel.web.problems import problem_response

__all__ = ("BodyLimitMiddleware",)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI answers it as 413
    instead of folding it into its generic 400 for unreadable bodies."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than {max_bytes} bytes.")


class BodyLimitMiddleware:
    """Answer 413 when a request body exceeds ``max_bytes``.

    A ``Content-Length`` over the limit is refused before the app runs; a body
    without one (chunked, or HTTP/2 and later) is counted as it is read and
    refused once it passes the limit, if the app has not started answering by
    then. A request with an accepted ``Content-Length`` (HTTP/1 and HTTP/2
    servers deliver no more than it declares), or an HTTP/1.x request with no
    length and no ``Transfer-Encoding`` (it has no body), goes through
    untouched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        framed = False  # True when the framing bounds the body: nothing to count then
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(scope, receive, send, 400, "Invalid Content-Length.")
                    return
                if declared > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
                framed = True
            elif name == b"transfer-encoding":
                framed = False
                break
        else:
            # HTTP/1.x without Content-Length or Transfer-Encoding has no body at
            # all; HTTP/2 and later may stream one without a length.
            framed = framed or scope.get("http_version") in ("1.0", "1.1")
        if framed:
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"The request body is larger than {self.max_bytes} bytes."
        await self._refuse(scope, receive, send, 413, detail)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        response = problem_response(scope, status, detail=detail)
        await response(scope, receive, send)
