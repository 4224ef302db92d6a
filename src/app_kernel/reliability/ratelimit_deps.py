"""``rate_limit(...)``: a FastAPI dependency limiting one route.

The default key is the authenticated user's id when there is one, else the
client IP resolved by the kernel's trusted-proxy rule (never a raw
``X-Forwarded-For``). The route's own identity (method and route template) is
always part of the key, so two routes never share a counter by accident.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import HTTPException, Request, Response

from app_kernel._ip_bucket import limit_bucket
from app_kernel._runtime import kernel_of_scope
from app_kernel.observability.route_template import full_template
from app_kernel.reliability.backends.base import Limit, RateLimitResult
from app_kernel.reliability.ratelimit import RateLimiter
from app_kernel.reliability.ratelimit_headers import rate_limit_headers, retry_after

__all__ = ("KeyFunc", "caller_key", "rate_limit", "route_identity")

KeyFunc = Callable[[Request, Any], "str | Awaitable[str]"]
"""``key_func(request, user)``: the identifier to limit by (``user`` may be None)."""


def route_identity(scope: dict[str, Any] | Any) -> str:
    """``<METHOD> <route template>``, the prefix included (``GET /api/v1/items/{id}``);
    the raw path when no route with a template matched."""
    template = full_template(scope.get("route"), scope)
    return f"{scope.get('method', '')} {scope.get('path', '') if template is None else template}"


async def caller_key(request: Request) -> str:
    """``user:<id>`` for an authenticated caller, else ``ip:<client ip>`` (for IPv6,
    the client's ``/64``: one host can use any address in it).

    A credential that is present but invalid counts as anonymous here: the
    route's own auth dependency answers 401 for it.
    """
    try:
        user = await kernel_of_scope(request.scope).optional_user(request)
    except HTTPException:
        user = None
    if user is not None:
        return f"user:{user.id}"
    return f"ip:{limit_bucket(_client_ip(request))}"


def _client_ip(request: Request) -> str:
    state = request.scope.get("state") or {}
    ip = state.get("client_ip")
    if ip is None and request.client is not None:
        ip = request.client.host
    return str(ip or "unknown")


def _policy_names(prefix: str, count: int) -> list[str]:
    return [prefix if i == 0 else f"{prefix}-{i + 1}" for i in range(count)]


def too_many_requests_detail(result: RateLimitResult) -> str:
    """A sentence naming the exceeded limits and when to retry."""
    exceeded = [s.limit for s in result.states if s.exceeded]
    names = ", ".join(f"{lim.requests} per {lim.window_seconds:g}s" for lim in exceeded)
    return f"Rate limit exceeded ({names}); retry in {retry_after(result)} s."


def rate_limit(
    requests: int,
    window: float,
    key_func: KeyFunc | None = None,
    *,
    also: Iterable[tuple[int, float]] = (),
    shadow: bool | None = None,
) -> Callable[[Request, Response], Awaitable[None]]:
    """A dependency allowing ``requests`` per sliding ``window`` seconds on a route.

    Every response it lets through carries ``RateLimit-Policy`` and
    ``RateLimit``; a refused request gets 429 problem+json with ``Retry-After``.

    Args:
        requests: requests allowed per window.
        window: window length in seconds.
        key_func: ``key_func(request, user)`` returning the identifier, a str
            (sync or async; anything else fails the request with a ``TypeError``
            naming the function); by default the user id, else the client IP.
        also: further ``(requests, window)`` limits, checked all-or-nothing
            with the first: a request refused by one consumes none.
        shadow: count and log refusals but let them through; the
            ``shadow_mode`` setting when None.

    Example::

        @app.post("/api/action")
        async def action(_: None = Depends(rate_limit(10, 60, also=((1000, 3600),)))): ...
    """
    limits = (Limit(requests, window), *(Limit(r, w) for r, w in also))
    extra = tuple((lim.requests, lim.window_seconds) for lim in limits[1:])
    names = _policy_names("route", len(limits))
    RateLimiter.remember_windows(limits)

    async def dependency(request: Request, response: Response) -> None:
        kernel = kernel_of_scope(request.scope)
        if key_func is None:
            caller = await caller_key(request)
        else:
            try:
                user = await kernel.optional_user(request)
            except HTTPException:
                user = None
            value = key_func(request, user)
            key = await value if inspect.isawaitable(value) else value
            if not isinstance(key, str):
                name = getattr(key_func, "__qualname__", repr(key_func))
                msg = f"rate_limit key_func {name} returned {key!r}: expected a str identifier"
                raise TypeError(msg)
            caller = "key:" + key
        identifier = f"route:{route_identity(request.scope)}:{caller}"
        result = await kernel.rate_limiter.hit(
            identifier, limits[0].requests, limits[0].window_seconds, also=extra, shadow=shadow
        )
        headers = rate_limit_headers(names, result)
        if not result.allowed:
            headers["Retry-After"] = retry_after(result)
            raise HTTPException(429, too_many_requests_detail(result), headers=headers)
        response.headers.update(headers)

    return dependency
