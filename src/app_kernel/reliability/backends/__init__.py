"""Backends of the reliability area: Redis and the embedded SQLite file."""

from __future__ import annotations

# --- rate limiting -------------------------------------------------------------------------
from app_kernel.reliability.backends.base import (
    Limit,
    LimitState,
    RateLimitBackend,
    RateLimitResult,
)
from app_kernel.reliability.backends.redis_ratelimit import RedisRateLimitBackend
from app_kernel.reliability.backends.sqlite_ratelimit import SqliteRateLimitBackend

# --- end rate limiting
# isort: split

# --- idempotency ---------------------------------------------------------------------------
from app_kernel.reliability.backends.idempotency_base import (
    Claim,
    ClaimState,
    IdempotencyBackend,
)
from app_kernel.reliability.backends.redis_idempotency import RedisIdempotency
from app_kernel.reliability.backends.sqlite_idempotency import SqliteIdempotency

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
