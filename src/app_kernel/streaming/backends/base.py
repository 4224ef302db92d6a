"""The contract every lease backend keeps, and the values it returns.

A lease is one open stream of one user. It lives until its deadline
(``ttl_seconds`` after it was granted or last refreshed), or until it is
released. Deadlines come from the backend's clock (Redis ``TIME``, the host's
clock for the embedded SQLite file), never from the calling process, so servers
with skewed clocks share one limit. Expired leases are pruned by the backend's
own writes.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

__all__ = ("LeaseBackend", "LeaseGrant", "LeaseStatus")


class LeaseGrant(NamedTuple):
    """The answer to an acquire."""

    granted: bool
    """True if the lease is now held (or was already held and got extended)."""
    retry_after_seconds: float
    """When refused: time until the user's oldest live lease expires; else 0."""


class LeaseStatus(NamedTuple):
    """A user's live leases, read at one instant."""

    active: int
    """Leases not yet expired."""
    oldest_expires_in_seconds: float
    """Time until the first of them expires; 0 when there are none."""


class LeaseBackend(Protocol):
    """**Protocol**: per-user lease sets shared by every process of the service.

    Each method is one atomic operation (one Redis round trip, one SQLite
    transaction). Failures raise :class:`~app_kernel.errors.BackendUnavailable`.
    ``user_id`` and ``lease_id`` may be any string (empty, huge, undecodable);
    backends store them in bounded, safe form.
    """

    async def acquire(
        self, user_id: str, lease_id: str, limit: int, ttl_seconds: float
    ) -> LeaseGrant:
        """Grant ``lease_id`` if the user holds fewer than ``limit`` live leases.

        Acquiring a lease id the user already holds extends it instead (so a
        retried call never takes two slots).
        """
        ...

    async def release(self, user_id: str, lease_id: str) -> None:
        """Drop the lease; an unknown or expired lease is a no-op."""
        ...

    async def refresh(self, user_id: str, lease_id: str, ttl_seconds: float) -> bool:
        """Move a live lease's deadline to ``ttl_seconds`` from now.

        Returns False, changing nothing, if the lease expired or is unknown.
        """
        ...

    async def status(self, user_id: str) -> LeaseStatus:
        """Count the user's live leases and the time until the oldest expires."""
        ...
