"""Refuse requests whose Host header is not one the service answers to."""

from __future__ import annotations

from collections.abc import Sequence

from app_kernel.types import ASGIApp, Receive, Scope, Send
from app_kernel.web.problems import problem_response

__all__ = ("AllowedHostsMiddleware",)


class AllowedHostsMiddleware:
    """Answer 400 problem+json when the Host header is not allowed.

    Entries are exact host names or ``*.example.com`` (any subdomain);
    ``*`` alone allows every host and makes this middleware a no-op.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed_hosts
        self.exact = frozenset(h.lower() for h in allowed_hosts if not h.startswith("*."))
        self.suffixes = tuple(h[1:].lower() for h in allowed_hosts if h.startswith("*."))

    def _allowed(self, host: str) -> bool:
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1").lower()
                break
        # Drop the port: "[::1]:8000" -> "[::1]", "example.com:8000" -> "example.com".
        host = host.split("]", 1)[0] + "]" if host.startswith("[") else host.split(":", 1)[0]
        if self._allowed(host):
            await self.app(scope, receive, send)
            return
        response = problem_response(scope, 400, detail="The Host header is not allowed here.")
        await response(scope, receive, send)
