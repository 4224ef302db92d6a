"""``GET /metrics``: the Prometheus exposition, protected as configured.

Protection (``features.protect_metrics``):

``admin``
    The configured metrics bearer token (``observability.metrics_token_hash``,
    compared as SHA-256 digests in constant time), or the credentials of an
    admin user (token or API key) through the kernel's optional-user resolver.
    No credentials answer 401 with ``WWW-Authenticate: Bearer``; a non-admin
    user gets 403.
``internal``
    Only loopback and private-network (10/8, 172.16/12, 192.168/16, fc00::/7)
    clients, by the client IP the kernel resolved with its trusted-proxy rule
    (a spoofed ``X-Forwarded-For`` from an untrusted peer changes nothing);
    others get 403.
``none``
    Public.

This module does not import auth: the composition root passes the resolver.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from app_kernel._runtime import kernel_of_scope

if TYPE_CHECKING:
    from app_kernel.observability.metrics import Metrics

__all__ = ("is_internal_address", "metrics_guard", "metrics_router")

ProtectMode = Literal["admin", "internal", "none"]


class _User(Protocol):
    @property
    def is_admin(self) -> bool: ...


OptionalUser = Callable[[Request], Awaitable[_User | None]]


_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def is_internal_address(address: str | None) -> bool:
    """True for loopback and private-network addresses (RFC 1918, RFC 4193 and
    their IPv4-mapped forms); documentation and link-local ranges are not internal."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or any(ip in network for network in _PRIVATE_NETWORKS)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def metrics_guard(
    mode: ProtectMode,
    *,
    optional_user: OptionalUser | None = None,
    token_hash: str | None = None,
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency enforcing ``mode`` (see the module doc).

    Args:
        mode: ``admin``, ``internal`` or ``none``.
        optional_user: resolves the caller (None when anonymous; raises 401 for
            bad credentials); needed for ``admin``.
        token_hash: SHA-256 hex of the metrics bearer token, if one is configured.
    """
    expected = bytes.fromhex(token_hash) if token_hash else None

    async def allow_all(request: Request) -> None:
        del request

    async def internal_only(request: Request) -> None:
        client_ip = request.scope.get("state", {}).get("client_ip")
        if not is_internal_address(client_ip):
            raise HTTPException(403, "Metrics are served to internal networks only.")

    async def admin_only(request: Request) -> None:
        token = _bearer(request)
        if token is not None and expected is not None:
            digest = hashlib.sha256(token.encode("utf-8")).digest()
            if hmac.compare_digest(digest, expected):
                return
        if optional_user is None:
            raise HTTPException(401, "Metrics need a bearer token.", {"WWW-Authenticate": "Bearer"})
        user = await optional_user(request)
        if user is None:
            raise HTTPException(
                401, "Metrics need an admin's credentials.", {"WWW-Authenticate": "Bearer"}
            )
        if not user.is_admin:
            raise HTTPException(403, "Metrics need an admin.")

    guards = {"none": allow_all, "internal": internal_only, "admin": admin_only}
    return guards[mode]


async def _render_in_thread(metrics: Metrics, accept: str) -> tuple[bytes, str]:
    """``metrics.render(accept)`` in a worker thread that starts once this loop step is over.

    A large render holds the GIL for a good part of a second. Started at once, it would
    compete for the GIL with the rest of the current step, which then runs many times
    slower (in asyncio debug mode that step stats every source file on the stack).
    """
    step_over = threading.Event()

    def render() -> tuple[bytes, str]:
        step_over.wait()
        return metrics.render(accept)

    asyncio.get_running_loop().call_soon(step_over.set)
    return await asyncio.to_thread(render)


def metrics_router(path: str, guard: Callable[..., Any]) -> APIRouter:
    """A router answering ``GET {path}`` with the kernel's metrics.

    The exposition is rendered in a worker thread: merging many series (or, in
    multiprocess mode, many files) would otherwise stall the event loop.
    """
    router = APIRouter(tags=["metrics"])

    @router.get(path, dependencies=[Depends(guard)], include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        metrics = kernel_of_scope(request.scope).metrics
        body, content_type = await _render_in_thread(metrics, request.headers.get("accept", ""))
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    return router
