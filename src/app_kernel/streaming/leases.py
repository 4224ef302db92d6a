"""StreamLeaseLimiter: at most N open streams per user, across every server.

A stream holds a lease while it runs. Leases expire ``lease_ttl_seconds`` after
they were granted or last refreshed, so the leases of a server that died free
themselves; a live stream refreshes its lease well before that
(:mod:`app_kernel.streaming.lifecycle` does it in the background).

Leases fail closed: when the backend errs, or does not answer within
``backend_timeout_seconds``, every operation raises
:class:`~app_kernel.errors.BackendUnavailable` (HTTP 503) rather than letting
streams start unlimited.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from app_kernel._deadline import backend_deadline
from app_kernel.errors import BackendUnavailable
from app_kernel.settings import StreamingSettings
from app_kernel.streaming.backends.base import LeaseBackend

if TYPE_CHECKING:
    from app_kernel.observability.metrics import Metrics

__all__ = ("LeaseAttempt", "StreamLeaseLimiter")

T = TypeVar("T")


class LeaseAttempt(NamedTuple):
    """The outcome of :meth:`StreamLeaseLimiter.try_acquire`."""

    lease_id: str | None
    """The new lease, or None when the user is at the limit."""
    retry_after_seconds: float
    """When refused: time until the user's oldest lease expires; else 0."""


class StreamLeaseLimiter:
    """Lease-based limit on the concurrent streams of each user.

    Args:
        backend: where leases live (Redis or the embedded SQLite file).
        settings: the limit, TTL, refresh interval and backend timeout.
    """

    def __init__(self, backend: LeaseBackend, settings: StreamingSettings | None = None) -> None:
        settings = settings or StreamingSettings()
        self.backend = backend
        self.max_concurrent_per_user = settings.max_concurrent_per_user
        self.lease_ttl_seconds: float = settings.lease_ttl_seconds
        self.refresh_interval_seconds = (
            settings.lease_refresh_interval_seconds or settings.lease_ttl_seconds / 3
        )
        self.backend_timeout_seconds = settings.backend_timeout_seconds
        self.metrics: Metrics | None = None
        """Where acquired/rejected/released leases are counted; the kernel sets its own."""

    async def _bounded(self, operation: str, call: Awaitable[T]) -> T:
        try:
            async with backend_deadline(self.backend_timeout_seconds):
                return await call
        except TimeoutError as exc:
            msg = (
                f"stream leases: {operation} took longer than "
                f"backend_timeout_seconds={self.backend_timeout_seconds}"
            )
            raise BackendUnavailable(msg) from exc

    async def try_acquire(self, user_id: str) -> LeaseAttempt:
        """Acquire a lease, or learn how long until one may free up.

        Raises:
            BackendUnavailable: the backend failed or timed out.
        """
        lease_id = uuid.uuid4().hex
        try:
            grant = await self._bounded(
                "acquire",
                self.backend.acquire(
                    user_id, lease_id, self.max_concurrent_per_user, self.lease_ttl_seconds
                ),
            )
        except asyncio.CancelledError:
            # The lease may have been granted before the caller went away; the id
            # is ours, so drop it rather than hold a slot until the TTL.
            await asyncio.shield(self._release_quietly(user_id, lease_id))
            raise
        if self.metrics is not None:
            outcome = "acquired" if grant.granted else "rejected"
            self.metrics.increment("stream_leases.events", tags={"event": outcome})
        if not grant.granted:
            return LeaseAttempt(None, grant.retry_after_seconds)
        return LeaseAttempt(lease_id, 0.0)

    async def acquire_stream_lease(self, user_id: str) -> str | None:
        """Try to acquire a lease for the user.

        Returns:
            The lease id if the user is below the limit, else None.

        Raises:
            BackendUnavailable: the backend failed or timed out.
        """
        return (await self.try_acquire(user_id)).lease_id

    async def release_stream_lease(self, user_id: str, lease_id: str) -> None:
        """Release a lease. Releasing an unknown or expired lease does nothing.

        Raises:
            BackendUnavailable: the backend failed or timed out (the lease then
                expires after its TTL).
        """
        await self._bounded("release", self.backend.release(user_id, lease_id))
        if self.metrics is not None:
            self.metrics.increment("stream_leases.events", tags={"event": "released"})

    async def _release_quietly(self, user_id: str, lease_id: str) -> None:
        with contextlib.suppress(BackendUnavailable):  # else it expires after its TTL
            await self.release_stream_lease(user_id, lease_id)

    async def refresh_stream_lease(self, user_id: str, lease_id: str) -> bool:
        """Extend a lease to a full TTL from now, while its stream continues.

        Returns:
            False if the lease had already expired (or was released): the
            stream no longer counts against the limit and should stop.

        Raises:
            BackendUnavailable: the backend failed or timed out.
        """
        return await self._bounded(
            "refresh", self.backend.refresh(user_id, lease_id, self.lease_ttl_seconds)
        )

    async def get_active_streams(self, user_id: str) -> int:
        """The number of the user's live (not expired) leases.

        Raises:
            BackendUnavailable: the backend failed or timed out.
        """
        return (await self._bounded("status", self.backend.status(user_id))).active

    async def oldest_lease_expires_in(self, user_id: str) -> float:
        """Seconds until the user's oldest live lease expires; 0 when none is held.

        A full user gets a free slot by then at the latest, which makes it the
        ``Retry-After`` of a refused stream.

        Raises:
            BackendUnavailable: the backend failed or timed out.
        """
        status = await self._bounded("status", self.backend.status(user_id))
        return status.oldest_expires_in_seconds

    async def can_start_stream(self, user_id: str) -> bool:
        """True if the user holds fewer live leases than the limit (a hint: racy)."""
        return await self.get_active_streams(user_id) < self.max_concurrent_per_user
