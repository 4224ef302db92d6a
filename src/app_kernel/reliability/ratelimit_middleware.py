"""The global rate limit: pure ASGI middleware limiting every route but a few.

Health, readiness, metrics and the docs (pages, static files, ``openapi.json``)
are never limited. A request is keyed by its user when it carries a valid
credential, else by its client IP. Headers merge with a route's own
``rate_limit`` ones into one ``RateLimit``/``RateLimit-Policy`` list each.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from app_kernel._runtime import kernel_of_scope
from app_kernel.errors import BackendUnavailable
from app_kernel.reliability.backends.base import RateLimitResult
from app_kernel.reliability.ratelimit_deps import caller_key, too_many_requests_detail
from app_kernel.reliability.ratelimit_headers import (
    merge_header,
    rate_limit_headers,
    rate_limit_policy,
    rate_limit_state,
    retry_after,
)
from app_kernel.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app_kernel.settings import KernelSettings

__all__ = ("GlobalRateLimitMiddleware", "global_limit_exemptions")

_POLICY = "global"


class GlobalRateLimitMiddleware:
    """Apply ``rate_limit_requests`` per ``rate_limit_window_seconds`` to every route.

    Args:
        app: the next ASGI app.
        exempt_paths: paths never limited (exact match, without ``root_path``).
        exempt_prefixes: path prefixes never limited (the docs' static files).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        exempt_paths: Iterable[str] = (),
        exempt_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.exempt_paths = frozenset(exempt_paths)
        self.exempt_prefixes = tuple(exempt_prefixes)

    def _exempt(self, scope: Scope) -> bool:
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        return path in self.exempt_paths or path.startswith(self.exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        kernel = kernel_of_scope(scope)
        identifier = f"global:{await caller_key(request)}"
        try:
            result = await kernel.rate_limiter.hit(identifier)
        except BackendUnavailable:
            await _problem(
                scope,
                send,
                503,
                "The rate limiter is unavailable; try again shortly.",
                {"Retry-After": "1"},
            )
            return
        if not result.allowed:
            headers = rate_limit_headers((_POLICY,), result)
            headers["Retry-After"] = retry_after(result)
            await _problem(scope, send, 429, too_many_requests_detail(result), headers)
            return
        policy, limit = _header_values(result)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _merged(list(message.get("headers", ())), policy, limit)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def global_limit_exemptions(app: FastAPI, settings: KernelSettings) -> dict[str, Any]:
    """Keyword arguments of :class:`GlobalRateLimitMiddleware` for ``app``.

    Health, readiness and metrics paths, the docs pages, ``openapi.json``, the
    OAuth2 redirect page and the docs' static files.
    """
    features = settings.features
    paths = {
        features.health_path,
        features.ready_path,
        features.metrics_path,
        app.openapi_url,
        app.docs_url,
        app.redoc_url,
        app.swagger_ui_oauth2_redirect_url,
    }
    docs = app.docs_url or app.redoc_url
    return {
        "exempt_paths": sorted(path for path in paths if path),
        "exempt_prefixes": [f"{docs}/static/"] if docs else [],
    }


def _header_values(result: RateLimitResult) -> tuple[bytes, bytes]:
    """``RateLimit-Policy`` and ``RateLimit`` of an allowed hit, as header bytes."""
    if len(result.states) != 1:
        headers = rate_limit_headers((_POLICY,), result)
        return (
            headers["RateLimit-Policy"].encode("latin-1"),
            headers["RateLimit"].encode("latin-1"),
        )
    # The usual case, one limit, built without the lists and the dict.
    state = result.states[0]
    policy = _policy_value(state.limit.requests, state.limit.window_seconds)
    return policy, rate_limit_state(_POLICY, state).encode("latin-1")


@functools.lru_cache(maxsize=64)
def _policy_value(requests: int, window_seconds: float) -> bytes:
    return rate_limit_policy(_POLICY, requests, window_seconds).encode("latin-1")


def _merged(
    headers: list[tuple[bytes, bytes]], policy: bytes, limit: bytes
) -> list[tuple[bytes, bytes]]:
    """``headers`` with the global policy first in one RateLimit(-Policy) field each."""
    for name, _ in headers:
        if name[:9].lower() == b"ratelimit":
            break
    else:  # the route set none of its own
        headers.append((b"ratelimit-policy", policy))
        headers.append((b"ratelimit", limit))
        return headers
    found: dict[bytes, str | None] = {b"ratelimit-policy": None, b"ratelimit": None}
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower in found:
            found[lower] = merge_header(found[lower], value.decode("latin-1"))
        else:
            kept.append((name, value))
    ours = {b"ratelimit-policy": policy, b"ratelimit": limit}
    for lower, route_value in found.items():
        merged = ours[lower].decode("latin-1")
        if route_value:
            merged = merge_header(merged, route_value)
        kept.append((lower, merged.encode("latin-1")))
    return kept


async def _problem(
    scope: Scope, send: Send, status: int, detail: str, headers: dict[str, str]
) -> None:
    """Send an RFC 9457 problem (the web layer sits above this area, so not its helper)."""
    state = scope.get("state") or {}
    title = {429: "Too Many Requests", 503: "Service Unavailable"}[status]
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "request_id": state.get("request_id"),
        }
    ).encode()
    raw = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *((key.lower().encode("latin-1"), val.encode("latin-1")) for key, val in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
