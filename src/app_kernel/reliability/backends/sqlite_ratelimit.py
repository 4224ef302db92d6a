"""Rate limits in the embedded SQLite file: one ``BEGIN IMMEDIATE`` per check.

The write lock is taken first, so the read-then-write of a check is atomic
across every process of the host. Time is this host's clock, which every
process sharing the file shares too.

Tables::

    ratelimit_log      exact log: one row per recorded hit (ident, window_ms, at_ms)
    ratelimit_counter  sliding-window counter: (ident, window_ms, bucket) -> hits

A check prunes its own identifier's old rows; rows of idle identifiers are
swept, by their ``expires_ms``, at most once per ``sweep_interval_seconds``.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import TYPE_CHECKING

from app_kernel.reliability.backends.base import Limit, LimitState

if TYPE_CHECKING:
    from app_kernel._sqlite.store import SqliteStore

__all__ = ("SqliteRateLimitBackend",)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratelimit_log (
    ident TEXT NOT NULL,
    window_ms INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ratelimit_log_key ON ratelimit_log (ident, window_ms, at_ms);
CREATE INDEX IF NOT EXISTS ratelimit_log_expiry ON ratelimit_log (expires_ms);
CREATE TABLE IF NOT EXISTS ratelimit_counter (
    ident TEXT NOT NULL,
    window_ms INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    hits INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (ident, window_ms, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ratelimit_counter_expiry ON ratelimit_counter (expires_ms);
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SqliteRateLimitBackend:
    """:class:`~app_kernel.reliability.backends.base.RateLimitBackend` on SQLite.

    Build it before the store opens: it registers its tables.

    Args:
        store: the kernel's embedded store.
        sweep_interval_seconds: how often a check also deletes every expired row.
    """

    def __init__(self, store: SqliteStore, *, sweep_interval_seconds: float = 5.0) -> None:
        self._store = store
        self.sweep_interval_seconds = sweep_interval_seconds
        self._last_sweep_ms = 0
        store.add_schema(SCHEMA)

    def _evaluate(
        self,
        conn: sqlite3.Connection,
        key: str,
        limits: tuple[Limit, ...],
        exact_threshold: int,
        now: int,
        *,
        record: bool,
    ) -> tuple[LimitState, ...]:
        rooms: list[int] = []
        resets: list[int] = []
        retries: list[int] = []
        buckets: list[int] = []
        for limit in limits:
            limit_n, w = limit.requests, limit.window_ms
            if limit.is_exact(exact_threshold):
                if record:
                    conn.execute(
                        "DELETE FROM ratelimit_log"
                        " WHERE ident = ? AND window_ms = ? AND at_ms <= ?",
                        (key, w, now - w),
                    )
                rows = conn.execute(
                    "SELECT at_ms FROM ratelimit_log"
                    " WHERE ident = ? AND window_ms = ? AND at_ms > ? ORDER BY at_ms",
                    (key, w, now - w),
                ).fetchall()
                count = len(rows)
                rooms.append(limit_n - count)
                buckets.append(0)
                if count + 1 > limit_n:
                    retry = rows[count - limit_n][0] + w - now
                    retries.append(retry)
                    resets.append(retry)
                else:
                    retries.append(0)
                    resets.append(rows[0][0] + w - now if rows else w)
            else:
                bucket = now // w
                elapsed = now - bucket * w
                found = dict(
                    conn.execute(
                        "SELECT bucket, hits FROM ratelimit_counter"
                        " WHERE ident = ? AND window_ms = ? AND bucket IN (?, ?)",
                        (key, w, bucket - 1, bucket),
                    ).fetchall()
                )
                prev, cur = found.get(bucket - 1, 0), found.get(bucket, 0)
                est = prev * (w - elapsed) / w + cur
                rooms.append(math.floor(limit_n - est))
                buckets.append(bucket)
                if est + 1 > limit_n:
                    if cur + 1 <= limit_n:
                        retry = math.ceil((w - elapsed) - (limit_n - 1 - cur) * w / prev)
                    else:
                        retry = (w - elapsed) + max(0, math.ceil(w - (limit_n - 1) * w / cur))
                    retry = max(1, retry)
                    retries.append(retry)
                    resets.append(retry)
                else:
                    retries.append(0)
                    resets.append(w - elapsed)
        allowed = all(retry == 0 for retry in retries)
        used = 1 if record and allowed else 0
        if record and allowed:
            done: set[tuple[bool, int]] = set()
            for limit, bucket in zip(limits, buckets, strict=True):
                exact, w = limit.is_exact(exact_threshold), limit.window_ms
                if (exact, w) in done:
                    continue
                done.add((exact, w))
                if exact:
                    conn.execute(
                        "INSERT INTO ratelimit_log (ident, window_ms, at_ms, expires_ms)"
                        " VALUES (?, ?, ?, ?)",
                        (key, w, now, now + w),
                    )
                else:
                    conn.execute(
                        "INSERT INTO ratelimit_counter (ident, window_ms, bucket, hits, expires_ms)"
                        " VALUES (?, ?, ?, 1, ?) ON CONFLICT (ident, window_ms, bucket)"
                        " DO UPDATE SET hits = hits + 1",
                        (key, w, bucket, (bucket + 2) * w),
                    )
                    conn.execute(
                        "DELETE FROM ratelimit_counter WHERE ident = ? AND window_ms = ?"
                        " AND bucket < ?",
                        (key, w, bucket - 1),
                    )
        if record and now - self._last_sweep_ms >= self.sweep_interval_seconds * 1000:
            self._last_sweep_ms = now
            conn.execute("DELETE FROM ratelimit_log WHERE expires_ms <= ?", (now,))
            conn.execute("DELETE FROM ratelimit_counter WHERE expires_ms <= ?", (now,))
        return tuple(
            LimitState(
                limit=limit,
                remaining=max(0, room - used),
                reset_seconds=reset / 1000,
                retry_after_seconds=retry / 1000,
            )
            for limit, room, reset, retry in zip(limits, rooms, resets, retries, strict=True)
        )

    async def hit(
        self, key: str, limits: tuple[Limit, ...], exact_threshold: int
    ) -> tuple[LimitState, ...]:
        """Record one hit if every limit has room (one transaction)."""
        return await self._store.transaction(
            lambda conn: self._evaluate(conn, key, limits, exact_threshold, _now_ms(), record=True)
        )

    async def peek(
        self, key: str, limits: tuple[Limit, ...], exact_threshold: int
    ) -> tuple[LimitState, ...]:
        """The states a hit would see, without writing."""
        return await self._store.read(
            lambda conn: self._evaluate(conn, key, limits, exact_threshold, _now_ms(), record=False)
        )

    async def reset(self, key: str, windows_ms: frozenset[int]) -> None:
        """Delete every row of ``key`` (all windows, both algorithms)."""
        del windows_ms  # rows are found by identifier alone

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM ratelimit_log WHERE ident = ?", (key,))
            conn.execute("DELETE FROM ratelimit_counter WHERE ident = ?", (key,))

        await self._store.transaction(run)

    async def row_count(self, key: str) -> int:
        """Rows stored for ``key`` (for tests and operators)."""

        def run(conn: sqlite3.Connection) -> int:
            log = conn.execute("SELECT COUNT(*) FROM ratelimit_log WHERE ident = ?", (key,))
            counter = conn.execute("SELECT COUNT(*) FROM ratelimit_counter WHERE ident = ?", (key,))
            return int(log.fetchone()[0]) + int(counter.fetchone()[0])

        return await self._store.read(run)
