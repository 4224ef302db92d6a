"""The exception a user over their stream limit gets."""

from __future__ import annotations

import math

from fastapi import HTTPException

from app_kernel.errors import KernelError

__all__ = ("StreamLimitExceeded",)


class StreamLimitExceeded(HTTPException, KernelError):
    """The user already holds ``max_concurrent_per_user`` live stream leases.

    An ``HTTPException``: left to propagate, the kernel answers it as a 429
    problem with ``Retry-After`` (whole seconds, at least 1).

    Attributes:
        retry_after_seconds: time until the user's oldest lease expires, the
            latest moment a slot frees up even if no stream ends before.
        limit: the per-user limit that was reached.
    """

    def __init__(self, retry_after_seconds: float, limit: int) -> None:
        self.retry_after_seconds = retry_after_seconds
        self.limit = limit
        seconds = max(1, math.ceil(retry_after_seconds))
        super().__init__(
            429,
            detail=f"Too many concurrent streams: at most {limit} at once.",
            headers={"Retry-After": str(seconds)},
        )
