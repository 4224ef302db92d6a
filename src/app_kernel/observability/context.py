"""Per-request context readable anywhere in the kernel without importing the web layer."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ("current_client_ip", "current_request_id", "request_client_ip", "request_id")

request_id: ContextVar[str | None] = ContextVar("app_kernel_request_id", default=None)
request_client_ip: ContextVar[str | None] = ContextVar("app_kernel_client_ip", default=None)


def current_request_id() -> str | None:
    """The id of the HTTP request this task is serving, if any."""
    return request_id.get()


def current_client_ip() -> str | None:
    """The client IP (by the trusted-proxy rule) of the request being served, if any."""
    return request_client_ip.get()
