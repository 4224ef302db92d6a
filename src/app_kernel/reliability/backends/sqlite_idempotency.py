"""Idempotency records in the embedded SQLite file, shared by one host's processes.

Each operation is one :meth:`SqliteStore.transaction` (``BEGIN IMMEDIATE``), so
a claim's read-then-insert is atomic across every process using the file. A
row past ``expires_at`` counts as absent; expired rows are deleted inside a
claim at most once every ``prune_interval_seconds`` per instance. Time is this
host's clock, which every process sharing the file also reads.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

from app_kernel.reliability.backends.idempotency_base import Claim, ClaimState

if TYPE_CHECKING:
    from app_kernel._sqlite.store import SqliteStore

__all__ = ("SqliteIdempotency",)

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_records (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    owner TEXT,
    record BLOB,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at
    ON idempotency_records (expires_at);
"""

_SELECT = "SELECT fingerprint, owner, record, expires_at FROM idempotency_records WHERE key = ?"
# A pending row has an owner and no record; a done row a record and no owner.
# The last three parameters of each: key, token, now.
_COMPLETE = (
    "UPDATE idempotency_records SET owner = NULL, record = ?, expires_at = ?"
    " WHERE key = ? AND owner = ? AND record IS NULL AND expires_at > ?"
)
_RELEASE = (
    "DELETE FROM idempotency_records"
    " WHERE key = ? AND owner = ? AND record IS NULL AND expires_at > ?"
)
_HEARTBEAT = (
    "UPDATE idempotency_records SET expires_at = ?"
    " WHERE key = ? AND owner = ? AND record IS NULL AND expires_at > ?"
)


class SqliteIdempotency:
    """:class:`~app_kernel.reliability.backends.idempotency_base.IdempotencyBackend`
    on the embedded SQLite file.

    Construct it before :meth:`SqliteStore.open`, which creates its table.

    Args:
        store: the kernel's embedded store.
        prune_interval_seconds: least time between two deletions of expired
            rows by this instance.
    """

    def __init__(self, store: SqliteStore, *, prune_interval_seconds: float = 60.0) -> None:
        self._store = store
        self._prune_interval = prune_interval_seconds
        self._next_prune = 0.0  # only touched on the store's single thread
        store.add_schema(SCHEMA)

    async def claim(self, key: str, fingerprint: str, token: str, lock_ttl_seconds: float) -> Claim:
        """Take the claim, or report the live record (see the base protocol)."""

        def run(conn: sqlite3.Connection) -> Claim:
            now = time.time()
            if now >= self._next_prune:
                self._next_prune = now + self._prune_interval
                conn.execute("DELETE FROM idempotency_records WHERE expires_at <= ?", (now,))
            row = conn.execute(_SELECT, (key,)).fetchone()
            if row is None or row[3] <= now:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency_records"
                    " (key, fingerprint, owner, record, expires_at) VALUES (?, ?, ?, NULL, ?)",
                    (key, fingerprint, token, now + lock_ttl_seconds),
                )
                return Claim(ClaimState.ACQUIRED)
            stored_fingerprint, _owner, record, expires_at = row
            if stored_fingerprint != fingerprint:
                return Claim(ClaimState.MISMATCH)
            if record is None:
                return Claim(ClaimState.IN_PROGRESS, retry_after_seconds=expires_at - now)
            return Claim(ClaimState.COMPLETED, record=bytes(record))

        return await self._store.transaction(run)

    async def complete(self, key: str, token: str, record: bytes, ttl_seconds: float) -> bool:
        """Store ``record`` if ``token`` still holds the claim."""

        def run(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cursor = conn.execute(
                _COMPLETE,
                (record, now + ttl_seconds, key, token, now),
            )
            return cursor.rowcount == 1

        return await self._store.transaction(run)

    async def release(self, key: str, token: str) -> bool:
        """Delete the pending claim if ``token`` holds it."""

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(_RELEASE, (key, token, time.time()))
            return cursor.rowcount == 1

        return await self._store.transaction(run)

    async def heartbeat(self, key: str, token: str, lock_ttl_seconds: float) -> bool:
        """Extend the claim if ``token`` holds it."""

        def run(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cursor = conn.execute(
                _HEARTBEAT,
                (now + lock_ttl_seconds, key, token, now),
            )
            return cursor.rowcount == 1

        return await self._store.transaction(run)
