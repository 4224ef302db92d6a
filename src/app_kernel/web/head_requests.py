"""Answer HEAD on every GET route, as HTTP asks of every server.

RFC 9110 (section 9.1) asks every general-purpose server to support HEAD, and
load balancers, uptime monitors and ``curl -I`` use it. FastAPI's routes
answer only the methods they declare, so a HEAD to a GET route gets 405.

:class:`HeadRequestMiddleware` sends such a HEAD through the app as a GET and
forwards the GET's status and headers (``Content-Length`` included, as the
RFC allows) with an empty body. Once that answer is complete, the app sees
the client as gone, so a streamed body (server-sent events, say) stops rather
than running on unread. A route that declares HEAD itself, a mounted app and
a plain Starlette route (which answers HEAD on its own) are left to answer it;
a HEAD to a path with no GET route gets the router's usual 404 or 405.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

from app_kernel.types import ASGIApp, Message, Receive, Scope, Send
from app_kernel.web.allowed_methods import serves

__all__ = ("HeadRequestMiddleware",)


class _AnswerComplete(OSError):
    """Raised by ``send`` once the HEAD answer is complete (ASGI 2.4: a gone client)."""


class HeadRequestMiddleware:
    """Serve HEAD as GET without the body where only a GET route matches.

    Args:
        app: the next ASGI app.
        routes: the app's routes (``app.router.routes``), read on each HEAD
            request, so routes added later count too.
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not self._only_get(scope):
            await self.app(scope, receive, send)
            return
        get_scope = dict(scope)
        get_scope["method"] = "GET"
        complete = asyncio.Event()

        async def head_send(message: Message) -> None:
            if complete.is_set():
                msg = "the HEAD answer is complete"
                raise _AnswerComplete(msg)
            if message["type"] == "http.response.start":
                await send(message)
                return
            # The first body message (or a file sent by an extension) ends the answer.
            complete.set()
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def head_receive() -> Message:
            if complete.is_set():
                return _disconnect()
            return await _first_of(receive(), complete)

        try:
            await self.app(get_scope, head_receive, head_send)
        except (_AnswerComplete, ClientDisconnect):
            if not complete.is_set():
                raise
        finally:
            # The outer layers read what routing wrote (the matched route for
            # metrics and logs); only the method stays the client's.
            for key, value in get_scope.items():
                if key != "method":
                    scope[key] = value

    def _only_get(self, scope: Scope) -> bool:
        """True when no route answers HEAD on this path but one answers GET."""
        routes = list(self.routes)
        if any(serves(route, scope, "HEAD") for route in routes):
            return False
        return any(serves(route, scope, "GET") for route in routes)


async def _first_of(receiving: Awaitable[Message], complete: asyncio.Event) -> Message:
    """The client's next message, or a disconnect as soon as the answer is complete
    (an ASGI 2.3 streaming response learns of a gone client only by ``receive``)."""
    message = asyncio.ensure_future(receiving)
    ended = asyncio.ensure_future(complete.wait())
    try:
        await asyncio.wait((message, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        if not message.done():
            message.cancel()
    return message.result() if message.done() and not message.cancelled() else _disconnect()


def _disconnect() -> Message:
    return {"type": "http.disconnect"}  # a new dict each time: the app may change it
