"""Backends of the reliability area: Redis and the embedded SQLite file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# --- rate limiting -------------------------------------------------------------------------
from app_kernel.reliability.backends.base import (
    Limit,
    LimitState,
    RateLimitBackend,
    RateLimitResult,
)
from app_kernel.reliability.backends.sqlite_ratelimit import SqliteRateLimitBackend

# --- end rate limiting
# isort: split

# --- idempotency ---------------------------------------------------------------------------
from app_kernel.reliability.backends.idempotency_base import (
    Claim,
    ClaimState,
    IdempotencyBackend,
)
from app_kernel.reliability.backends.sqlite_idempotency import SqliteIdempotency

if TYPE_CHECKING:
    from app_kernel.reliability.backends.redis_idempotency import RedisIdempotency
    from app_kernel.reliability.backends.redis_ratelimit import RedisRateLimitBackend

__all__ = (
    # --- rate limiting
    "Limit",
    "LimitState",
    "RateLimitBackend",
    "RateLimitResult",
    "RedisRateLimitBackend",
    "SqliteRateLimitBackend",
    # --- end rate limiting
    # --- idempotency
    "Claim",
    "ClaimState",
    "IdempotencyBackend",
    "RedisIdempotency",
    "SqliteIdempotency",
    # --- end idempotency
)

# The Redis backends need the optional ``redis`` extra: load them on first use only.
_REDIS_BACKENDS = {
    "RedisIdempotency": "app_kernel.reliability.backends.redis_idempotency",
    "RedisRateLimitBackend": "app_kernel.reliability.backends.redis_ratelimit",
}


def __getattr__(name: str) -> Any:
    module = _REDIS_BACKENDS.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    return getattr(importlib.import_module(module), name)
