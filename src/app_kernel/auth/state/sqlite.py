"""Auth state in the embedded SQLite file, shared by the processes of one host.

Every write is one :meth:`SqliteStore.transaction`: ``BEGIN IMMEDIATE`` takes
the file's write lock first, so a read-then-write (a rotation, a counter
increment) is atomic across every process using the file. Reads run outside a
transaction and never wait for writers (WAL).

Rows past their expiry are treated as absent. Each table's expired rows are
deleted inside a write transaction at most once every ``prune_interval_seconds``
per instance, through an index on the expiry column.

Strings that cannot be encoded as UTF-8 (lone surrogates from undecodable
input) are stored as BLOBs of their ``surrogatepass`` encoding. Such bytes are
never valid UTF-8, and SQLite never considers a BLOB equal to TEXT, so they
cannot collide with any ordinary string.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app_kernel.auth.state.base import FailureCount, RotateOutcome, UserRevocation

if TYPE_CHECKING:
    from app_kernel._sqlite.store import SqliteStore

__all__ = ("SqliteAuthState",)

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_families (
    family_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    current_jti TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_families_expires_at ON auth_families (expires_at);
CREATE TABLE IF NOT EXISTS auth_users (
    user_id TEXT PRIMARY KEY,
    valid_after REAL,
    disabled INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_users_expires_at ON auth_users (expires_at);
CREATE TABLE IF NOT EXISTS auth_failures (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    window_ends REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_failures_window_ends ON auth_failures (window_ends);
"""

# Table name -> the statement deleting its expired rows (constants, never formatted).
_PRUNE = {
    "auth_families": "DELETE FROM auth_families WHERE expires_at <= ?",
    "auth_users": "DELETE FROM auth_users WHERE expires_at <= ?",
    "auth_failures": "DELETE FROM auth_failures WHERE window_ends <= ?",
}

_SELECT_FAILURE = "SELECT count, window_ends FROM auth_failures WHERE key = ? AND window_ends > ?"

_SqlText = str | bytes


def _sql(value: str) -> _SqlText:
    """``value`` as SQLite can bind it: TEXT, or a BLOB when it is not valid UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")
    return value


def _from_sql(value: _SqlText) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


class SqliteAuthState:
    """:class:`~app_kernel.auth.state.base.AuthStateBackend` on the embedded SQLite file.

    Construct it before :meth:`SqliteStore.open`, which creates its tables.

    Args:
        store: the kernel's embedded store.
        prune_interval_seconds: least time between two deletions of a table's
            expired rows by this instance.
    """

    def __init__(self, store: SqliteStore, *, prune_interval_seconds: float = 60.0) -> None:
        self._store = store
        self._prune_interval = prune_interval_seconds
        # Only touched on the store's single thread.
        self._next_prune = dict.fromkeys(_PRUNE, 0.0)
        store.add_schema(SCHEMA)

    def _prune(self, conn: sqlite3.Connection, table: str, now: float) -> None:
        """Delete ``table``'s expired rows, unless this instance did so recently."""
        if now < self._next_prune[table]:
            return
        self._next_prune[table] = now + self._prune_interval
        conn.execute(_PRUNE[table], (now,))

    async def start_family(
        self, family_id: str, user_id: str, jti: str, family_expires_at: float
    ) -> None:
        """Record a new token family (a login) whose current refresh token is ``jti``.

        An earlier record under the same id is replaced.
        """

        def run(conn: sqlite3.Connection) -> None:
            self._prune(conn, "auth_families", time.time())
            conn.execute(
                "INSERT OR REPLACE INTO auth_families"
                " (family_id, user_id, current_jti, revoked, expires_at) VALUES (?, ?, ?, 0, ?)",
                (_sql(family_id), _sql(user_id), _sql(jti), family_expires_at),
            )

        await self._store.transaction(run)

    async def rotate(self, family_id: str, old_jti: str, new_jti: str) -> RotateOutcome:
        """Atomically replace the family's current token ``old_jti`` by ``new_jti``.

        Repeating a call that already rotated (same ``old_jti`` and ``new_jti``)
        gives ``ROTATED`` again, as the Redis backend does for client retries.
        """
        key = _sql(family_id)

        def run(conn: sqlite3.Connection) -> RotateOutcome:
            now = time.time()
            self._prune(conn, "auth_families", now)
            row = conn.execute(
                "SELECT current_jti, revoked FROM auth_families"
                " WHERE family_id = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
            if row is None or row[1]:
                return RotateOutcome.REVOKED
            current = _from_sql(row[0])
            if current == old_jti:
                conn.execute(
                    "UPDATE auth_families SET current_jti = ? WHERE family_id = ?",
                    (_sql(new_jti), key),
                )
                return RotateOutcome.ROTATED
            if current == new_jti:
                return RotateOutcome.ROTATED
            conn.execute("UPDATE auth_families SET revoked = 1 WHERE family_id = ?", (key,))
            return RotateOutcome.REUSED

        return await self._store.transaction(run)

    async def revoke_family(self, family_id: str) -> bool:
        """Revoke a family (logout); returns False if it was unknown or already revoked."""

        def run(conn: sqlite3.Connection) -> bool:
            now = time.time()
            self._prune(conn, "auth_families", now)
            cursor = conn.execute(
                "UPDATE auth_families SET revoked = 1"
                " WHERE family_id = ? AND revoked = 0 AND expires_at > ?",
                (_sql(family_id), now),
            )
            return cursor.rowcount == 1

        return await self._store.transaction(run)

    async def family_user(self, family_id: str) -> str | None:
        """The user id of a live (not revoked, not expired) family, else None."""

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT user_id FROM auth_families"
                " WHERE family_id = ? AND revoked = 0 AND expires_at > ?",
                (_sql(family_id), time.time()),
            ).fetchone()
            return None if row is None else _from_sql(row[0])

        return await self._store.read(run)

    async def set_valid_after(self, user_id: str, valid_after: float, ttl_seconds: float) -> None:
        """Refuse the user's tokens issued before ``valid_after``; forget after ``ttl_seconds``.

        A smaller ``valid_after`` than the recorded one changes nothing, and a
        shorter TTL never shortens the record's.
        """
        key = _sql(user_id)

        def run(conn: sqlite3.Connection) -> None:
            now = time.time()
            self._prune(conn, "auth_users", now)
            expires_at = now + ttl_seconds
            row = conn.execute(
                "SELECT valid_after, expires_at FROM auth_users"
                " WHERE user_id = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT OR REPLACE INTO auth_users (user_id, valid_after, disabled, expires_at)"
                    " VALUES (?, ?, 0, ?)",
                    (key, valid_after, expires_at),
                )
                return
            current, current_expiry = row
            conn.execute(
                "UPDATE auth_users SET valid_after = ?, expires_at = ? WHERE user_id = ?",
                (
                    valid_after if current is None else max(current, valid_after),
                    max(current_expiry, expires_at),
                    key,
                ),
            )

        await self._store.transaction(run)

    async def set_disabled(self, user_id: str, disabled: bool, ttl_seconds: float) -> None:
        """Mark the user deactivated (or active again).

        A shorter TTL never shortens the record's (it also holds ``valid_after``).
        """
        key = _sql(user_id)

        def run(conn: sqlite3.Connection) -> None:
            now = time.time()
            self._prune(conn, "auth_users", now)
            row = conn.execute(
                "SELECT valid_after, expires_at FROM auth_users"
                " WHERE user_id = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
            if not disabled:
                if row is None:
                    return
                if row[0] is None:  # nothing else recorded: forget the user
                    conn.execute("DELETE FROM auth_users WHERE user_id = ?", (key,))
                else:
                    conn.execute("UPDATE auth_users SET disabled = 0 WHERE user_id = ?", (key,))
                return
            expires_at = now + ttl_seconds
            if row is None:
                conn.execute(
                    "INSERT OR REPLACE INTO auth_users (user_id, valid_after, disabled, expires_at)"
                    " VALUES (?, NULL, 1, ?)",
                    (key, expires_at),
                )
            else:
                conn.execute(
                    "UPDATE auth_users SET disabled = 1, expires_at = ? WHERE user_id = ?",
                    (max(row[1], expires_at), key),
                )

        await self._store.transaction(run)

    async def user_state(self, user_id: str) -> UserRevocation:
        """The user's revocation state; the default when nothing is recorded."""

        def run(conn: sqlite3.Connection) -> UserRevocation:
            row = conn.execute(
                "SELECT valid_after, disabled FROM auth_users WHERE user_id = ? AND expires_at > ?",
                (_sql(user_id), time.time()),
            ).fetchone()
            if row is None:
                return UserRevocation()
            return UserRevocation(valid_after=row[0], disabled=bool(row[1]))

        return await self._store.read(run)

    async def failures(self, keys: Sequence[str]) -> list[FailureCount]:
        """Read failed-login counters, one per key, in order."""
        if not keys:
            return []

        def run(conn: sqlite3.Connection) -> list[FailureCount]:
            now = time.time()
            counts: list[FailureCount] = []
            for key in keys:
                row = conn.execute(
                    _SELECT_FAILURE,
                    (_sql(key), now),
                ).fetchone()
                counts.append(FailureCount(0, 0.0) if row is None else _count(row, now))
            return counts

        return await self._store.read(run)

    async def add_failure(self, keys: Sequence[str], window_seconds: float) -> list[FailureCount]:
        """Count one failure on every key (a window starts at a key's first failure).

        A key given twice counts once.
        """
        if not keys:
            return []
        unique = list(dict.fromkeys(keys))

        def run(conn: sqlite3.Connection) -> dict[str, FailureCount]:
            now = time.time()
            self._prune(conn, "auth_failures", now)
            by_key: dict[str, FailureCount] = {}
            for key in unique:
                sql_key = _sql(key)
                row = conn.execute(
                    _SELECT_FAILURE,
                    (sql_key, now),
                ).fetchone()
                if row is None:
                    row = (1, now + window_seconds)
                    conn.execute(
                        "INSERT OR REPLACE INTO auth_failures (key, count, window_ends)"
                        " VALUES (?, ?, ?)",
                        (sql_key, *row),
                    )
                else:
                    row = (row[0] + 1, row[1])
                    conn.execute(
                        "UPDATE auth_failures SET count = ? WHERE key = ?", (row[0], sql_key)
                    )
                by_key[key] = _count(row, now)
            return by_key

        by_key = await self._store.transaction(run)
        return [by_key[key] for key in keys]

    async def clear_failures(self, key: str) -> None:
        """Forget a counter (a successful login clears its username's)."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM auth_failures WHERE key = ?", (_sql(key),))

        await self._store.transaction(run)

    async def now(self) -> float:
        """This host's clock, in seconds since the epoch."""
        return time.time()


def _count(row: tuple[int, float], now: float) -> FailureCount:
    count, window_ends = row
    return FailureCount(int(count), window_ends - now)
