"""The contract of an auth state backend.

Times are seconds since the epoch as floats. Redis backends use the server's
clock (``TIME`` inside Lua) so servers with skewed clocks agree; the SQLite
backend serves one host and uses its clock. Every record expires on its own,
so nothing grows without bound.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ("AuthStateBackend", "FailureCount", "RotateOutcome", "UserRevocation")


class RotateOutcome(enum.Enum):
    """What :meth:`AuthStateBackend.rotate` found."""

    ROTATED = "rotated"
    """The presented token was the family's current one; the new one replaces it."""
    REUSED = "reused"
    """The presented token was retired earlier: the family is now revoked."""
    REVOKED = "revoked"
    """The family is unknown, expired or already revoked; nothing changed."""


@dataclass(frozen=True, slots=True)
class UserRevocation:
    """A user's revocation state.

    Attributes:
        valid_after: tokens issued (``iat``) before this time are refused; None
            when never set.
        disabled: the user was deactivated; every token is refused.
    """

    valid_after: float | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class FailureCount:
    """A failed-login counter.

    Attributes:
        count: failures in the current window.
        retry_after_seconds: seconds until the window ends (0 when empty).
    """

    count: int
    retry_after_seconds: float


class AuthStateBackend(Protocol):
    """**Protocol**: shared auth state, atomic across processes and servers."""

    async def start_family(
        self, family_id: str, user_id: str, jti: str, family_expires_at: float
    ) -> None:
        """Record a new token family (a login) whose current refresh token is ``jti``.

        The record expires at ``family_expires_at``, the absolute end of the login.
        """

    async def rotate(self, family_id: str, old_jti: str, new_jti: str) -> RotateOutcome:
        """Atomically replace the family's current token ``old_jti`` by ``new_jti``.

        Of several concurrent calls with the same ``old_jti`` exactly one gets
        ``ROTATED``. If ``old_jti`` is not the current token (it was retired by an
        earlier rotation), the family is revoked and ``REUSED`` returned. An
        unknown, expired or revoked family gives ``REVOKED``.
        """

    async def revoke_family(self, family_id: str) -> bool:
        """Revoke a family (logout); returns False if it was unknown or already revoked."""

    async def family_user(self, family_id: str) -> str | None:
        """The user id of a live (not revoked, not expired) family, else None."""

    async def set_valid_after(self, user_id: str, valid_after: float, ttl_seconds: float) -> None:
        """Refuse the user's tokens issued before ``valid_after``; forget after ``ttl_seconds``."""

    async def set_disabled(self, user_id: str, disabled: bool, ttl_seconds: float) -> None:
        """Mark the user deactivated (or active again)."""

    async def user_state(self, user_id: str) -> UserRevocation:
        """The user's revocation state; the default when nothing is recorded."""

    async def failures(self, keys: Sequence[str]) -> list[FailureCount]:
        """Read failed-login counters, one per key, in order."""

    async def add_failure(self, keys: Sequence[str], window_seconds: float) -> list[FailureCount]:
        """Count one failure on every key (a window starts at a key's first failure)."""

    async def clear_failures(self, key: str) -> None:
        """Forget a counter (a successful login clears its username's)."""

    async def now(self) -> float:
        """The backend's clock, in seconds since the epoch."""
