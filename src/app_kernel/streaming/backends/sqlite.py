"""Leases in the embedded SQLite file, shared by the processes of one host.

Each operation is one :meth:`~app_kernel._sqlite.store.SqliteStore.transaction`
(``BEGIN IMMEDIATE``), so counting and inserting is atomic across processes.
Deadlines come from the host's clock, which every process on the host shares.
Acquire and refresh delete every expired lease (of any user) through the index
on ``expires_at``, so the table only holds live leases and the recently dead.

User ids are stored as their SHA-256 digest and lease ids as their
``surrogatepass`` bytes: any string (empty, 10 kB, undecodable) is stored
without error, and a row's size is bounded by the lease id, which the kernel
generates.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from app_kernel.streaming.backends.base import LeaseGrant, LeaseStatus

if TYPE_CHECKING:
    from app_kernel._sqlite.store import SqliteStore

__all__ = ("SqliteLeaseBackend",)

SCHEMA = """
CREATE TABLE IF NOT EXISTS stream_leases (
    user_key BLOB NOT NULL,
    lease_id BLOB NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (user_key, lease_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stream_leases_expires_at ON stream_leases (expires_at);
"""

_PRUNE = "DELETE FROM stream_leases WHERE expires_at <= ?"
_LIVE = "SELECT count(*), min(expires_at) FROM stream_leases WHERE user_key = ? AND expires_at > ?"
_EXTEND = "UPDATE stream_leases SET expires_at = ? WHERE user_key = ? AND lease_id = ?"
_INSERT = "INSERT INTO stream_leases (user_key, lease_id, expires_at) VALUES (?, ?, ?)"
_DELETE = "DELETE FROM stream_leases WHERE user_key = ? AND lease_id = ?"


def _user_key(user_id: str) -> bytes:
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).digest()


def _lease_key(lease_id: str) -> bytes:
    return lease_id.encode("utf-8", "surrogatepass")


class SqliteLeaseBackend:
    """:class:`~app_kernel.streaming.backends.base.LeaseBackend` on the embedded file.

    Args:
        store: the kernel's store; the table is registered here, so build this
            before the store opens.
        clock: seconds since the epoch (tests may pass a fake one).
    """

    def __init__(self, store: SqliteStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        store.add_schema(SCHEMA)

    async def acquire(
        self, user_id: str, lease_id: str, limit: int, ttl_seconds: float
    ) -> LeaseGrant:
        """Grant ``lease_id`` if the user holds fewer than ``limit`` live leases."""
        user, lease = _user_key(user_id), _lease_key(lease_id)

        def run(conn: sqlite3.Connection) -> LeaseGrant:
            now = self._clock()
            conn.execute(_PRUNE, (now,))
            if conn.execute(_EXTEND, (now + ttl_seconds, user, lease)).rowcount:
                return LeaseGrant(True, 0.0)
            active, oldest = conn.execute(_LIVE, (user, now)).fetchone()
            if active >= limit:
                return LeaseGrant(False, max(0.0, oldest - now))
            conn.execute(_INSERT, (user, lease, now + ttl_seconds))
            return LeaseGrant(True, 0.0)

        return await self._store.transaction(run)

    async def release(self, user_id: str, lease_id: str) -> None:
        """Drop the lease; an unknown or expired lease is a no-op."""
        user, lease = _user_key(user_id), _lease_key(lease_id)
        await self._store.transaction(lambda conn: conn.execute(_DELETE, (user, lease)))

    async def refresh(self, user_id: str, lease_id: str, ttl_seconds: float) -> bool:
        """Move a live lease's deadline; False if it expired or is unknown."""
        user, lease = _user_key(user_id), _lease_key(lease_id)

        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            conn.execute(_PRUNE, (now,))
            return conn.execute(_EXTEND, (now + ttl_seconds, user, lease)).rowcount == 1

        return await self._store.transaction(run)

    async def status(self, user_id: str) -> LeaseStatus:
        """Count the user's live leases and the time until the oldest expires."""
        user = _user_key(user_id)

        def run(conn: sqlite3.Connection) -> LeaseStatus:
            now = self._clock()
            active, oldest = conn.execute(_LIVE, (user, now)).fetchone()
            if not active:
                return LeaseStatus(0, 0.0)
            return LeaseStatus(int(active), max(0.0, oldest - now))

        return await self._store.read(run)
