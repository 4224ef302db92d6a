"""Security headers on every HTTP response."""

from __future__ import annotations

from collections.abc import Iterable

from app_kernel.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ("API_CSP", "SecurityHeadersMiddleware")

API_CSP = "default-src 'none'; frame-ancestors 'none'"
_HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
_ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
_CSP = (b"content-security-policy", API_CSP.encode())
# What a response that set none of these headers itself gets (the usual case).
_DEFAULT = (*_ALWAYS, _CSP)
_OURS = frozenset(name for name, _ in (*_DEFAULT, _HSTS))


class SecurityHeadersMiddleware:
    """Add the kernel's security headers to every response.

    The strict API ``Content-Security-Policy`` is added unless the response set
    its own (the offline docs pages set a looser one of their own). HSTS is
    added only when the request came over https.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_security_headers(message.get("headers", ()), https)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _with_security_headers(
    headers: Iterable[tuple[bytes, bytes]], https: bool
) -> list[tuple[bytes, bytes]]:
    """``headers`` plus each of the kernel's headers the response did not set itself."""
    headers = list(headers)
    present = {name.lower() for name, _ in headers}
    if present.isdisjoint(_OURS):
        headers.extend(_DEFAULT)
    else:
        headers.extend(h for h in _DEFAULT if h[0] not in present)
    if https and _HSTS[0] not in present:
        headers.append(_HSTS)
    return headers
