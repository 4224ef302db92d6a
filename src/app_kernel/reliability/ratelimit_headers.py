"""Rate-limit response headers in the IETF draft's structured-field form.

draft-ietf-httpapi-ratelimit-headers (-08 and later)::

    RateLimit-Policy: "route";q=100;w=60
    RateLimit: "route";r=42;t=17

``q`` is the quota, ``w`` the window in seconds, ``r`` the remaining quota and
``t`` the seconds until it grows again. Several policies are list members of
one header each. ``Retry-After`` is delta seconds, never earlier than ``t``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from app_kernel.reliability.backends.base import LimitState, RateLimitResult

__all__ = (
    "merge_header",
    "rate_limit_headers",
    "rate_limit_policy",
    "rate_limit_state",
    "retry_after",
)


def _seconds(value: float) -> int:
    return max(0, math.ceil(value))


def rate_limit_headers(names: Sequence[str], result: RateLimitResult) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` for ``result``, one member per limit.

    Args:
        names: a policy name per limit, in the order of ``result.states``.
        result: what the hit decided.
    """
    policies: list[str] = []
    limits: list[str] = []
    for name, state in zip(names, result.states, strict=True):
        policies.append(rate_limit_policy(name, state.limit.requests, state.limit.window_seconds))
        limits.append(rate_limit_state(name, state))
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(limits)}


@functools.lru_cache(maxsize=1024)
def rate_limit_policy(name: str, requests: int, window_seconds: float) -> str:
    """One ``RateLimit-Policy`` member (the same for every hit of a limit)."""
    return f'"{name}";q={requests};w={_seconds(window_seconds)}'


def rate_limit_state(name: str, state: LimitState) -> str:
    """One ``RateLimit`` member: what is left of a limit after a hit."""
    return f'"{name}";r={state.remaining};t={_seconds(state.reset_seconds)}'


def retry_after(result: RateLimitResult) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(result.retry_after_seconds)))


def merge_header(first: str | None, second: str) -> str:
    """Two structured-field lists joined as one (a header field appears once)."""
    return second if not first else f"{first}, {second}"
