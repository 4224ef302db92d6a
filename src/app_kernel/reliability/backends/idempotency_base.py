"""The contract of an idempotency store: claim, complete, release, heartbeat.

A record lives under an opaque storage key (a hash of the caller's scope and
the client's Idempotency-Key, made by the service). It is either *pending*
(a request holds the claim, identified by a random fencing token, for the
lock TTL) or *done* (the stored response, kept for the record TTL). Each
operation is one atomic step on the backend: one Lua call on Redis, one
transaction on SQLite.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = ("Claim", "ClaimState", "IdempotencyBackend")


class ClaimState(enum.Enum):
    """What :meth:`IdempotencyBackend.claim` found."""

    ACQUIRED = "acquired"
    """No live record: the caller now holds the claim and must run the request."""
    IN_PROGRESS = "in_progress"
    """Another request with the same fingerprint holds the claim."""
    MISMATCH = "mismatch"
    """The key is in use (pending or done) for a different fingerprint."""
    COMPLETED = "completed"
    """A response is stored for this key and fingerprint: replay it."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of :meth:`IdempotencyBackend.claim`.

    Attributes:
        state: what was found.
        record: the stored response when ``state`` is ``COMPLETED``, else None.
        retry_after_seconds: when ``IN_PROGRESS``, the time left on the other
            request's claim (0 when unknown).
    """

    state: ClaimState
    record: bytes | None = None
    retry_after_seconds: float = 0.0


class IdempotencyBackend(Protocol):
    """**Protocol**: where claims and stored responses live.

    Keys are short printable strings chosen by the caller (hex digests);
    tokens are random strings owned by one claim.
    """

    async def claim(self, key: str, fingerprint: str, token: str, lock_ttl_seconds: float) -> Claim:
        """Take the claim on ``key`` for ``fingerprint`` with ``token``, unless a
        live record exists; then report that record instead."""
        ...

    async def complete(self, key: str, token: str, record: bytes, ttl_seconds: float) -> bool:
        """Store ``record`` for ``ttl_seconds`` if ``token`` still holds the claim.

        Returns False (and stores nothing) when the claim expired or belongs
        to another token.
        """
        ...

    async def release(self, key: str, token: str) -> bool:
        """Delete the pending claim if ``token`` holds it; False otherwise."""
        ...

    async def heartbeat(self, key: str, token: str, lock_ttl_seconds: float) -> bool:
        """Extend the claim to ``lock_ttl_seconds`` from now if ``token`` holds it."""
        ...
