"""Reliability: rate limiting and idempotency."""

from __future__ import annotations

# --- rate limiting -------------------------------------------------------------------------
from app_kernel.reliability.backends.base import Limit, LimitState, RateLimitResult
from app_kernel.reliability.ratelimit import RateLimiter, get_rate_limiter
from app_kernel.reliability.ratelimit_deps import rate_limit
from app_kernel.reliability.ratelimit_middleware import GlobalRateLimitMiddleware

# --- end rate limiting
# isort: split

# --- idempotency ---------------------------------------------------------------------------
from app_kernel.reliability.idempotency import (
    Idempotency,
    IdempotencyConflict,
    IdempotencyInProgress,
    idempotent,
)
from app_kernel.reliability.idempotency_http import IdempotencyMiddleware, idempotent_route

__all__ = (
    # --- rate limiting
    "GlobalRateLimitMiddleware",
    "Limit",
    "LimitState",
    "RateLimitResult",
    "RateLimiter",
    "get_rate_limiter",
    "rate_limit",
    # --- end rate limiting
    # --- idempotency
    "Idempotency",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "IdempotencyMiddleware",
    "idempotent",
    "idempotent_route",
    # --- end idempotency
)
