"""CORS: Starlette's middleware, with a short path for requests that carry no Origin."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.middleware.cors import CORSMiddleware

from app_kernel.types import Message, Receive, Scope, Send

__all__ = ("KernelCORSMiddleware",)


class KernelCORSMiddleware(CORSMiddleware):
    """Starlette's ``CORSMiddleware`` (same settings, same answers).

    Most requests to an API come from servers and scripts and carry no
    ``Origin``: for those Starlette only adds ``Vary: Origin`` (a cache must
    not serve this answer to a browser request of another origin), after
    building two header objects. This does the same with one scan of the
    request headers and one of the response headers; requests with an
    ``Origin`` take Starlette's own path.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(name == b"origin" for name, _ in scope["headers"]):
            await super().__call__(scope, receive, send)
            return

        async def send_with_vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_vary_origin(message.get("headers", ()))
            await send(message)

        await self.app(scope, receive, send_with_vary)


def _with_vary_origin(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``Origin`` added to one ``Vary`` field, as Starlette sets it."""
    kept: list[tuple[bytes, bytes]] = []
    vary: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"vary":
            vary.append(value)
        else:
            kept.append((name, value))
    if not vary:
        kept.append((b"vary", b"Origin"))
        return kept
    # Starlette puts the field where the first one was; the order of fields
    # with different names carries no meaning, so it goes last here.
    kept.append((b"vary", b", ".join([*vary, b"Origin"])))
    return kept
