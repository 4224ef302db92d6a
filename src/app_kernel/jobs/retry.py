"""Exponential backoff with full jitter between attempts."""

from __future__ import annotations

import random

from app_kernel.jobs.backends.base import RetryPolicy
from app_kernel.settings import JobSettings

__all__ = ("backoff_delay", "policy_from_settings")

_rng = random.SystemRandom()


def policy_from_settings(settings: JobSettings) -> RetryPolicy:
    """The retry policy named by ``retry_backoff_base_seconds`` / ``_cap_seconds``."""
    return RetryPolicy(
        base_seconds=settings.retry_backoff_base_seconds,
        cap_seconds=settings.retry_backoff_cap_seconds,
    )


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """A delay drawn from ``[0, min(cap, base * 2 ** (attempt - 1))]``, at least the minimum.

    ``attempt`` is the attempt that just failed (1 for the first).
    """
    exponent = min(max(attempt, 1) - 1, 62)  # 2 ** 62 already dwarfs any cap
    ceiling = min(policy.cap_seconds, policy.base_seconds * (2**exponent))
    return max(policy.min_delay_seconds, _rng.uniform(0.0, ceiling))
