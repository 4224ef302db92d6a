"""One SQLite file, one connection, one thread: coordination without a server.

Every call runs on a dedicated thread that owns the connection, so the event
loop never blocks on SQLite and the connection is never shared across threads.
The file is in WAL mode; writers from other processes wait up to the busy
timeout. Areas register their tables with :meth:`SqliteStore.add_schema`
before :meth:`open`. Opening waits out other processes opening the same new
file (see :mod:`app_kernel._sqlite.wal`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app_kernel._sqlite.wal import retry_while_busy, switch_to_wal
from app_kernel.errors import BackendUnavailable

__all__ = ("SqliteStore",)

T = TypeVar("T")


class SqliteStore:
    """An embedded SQLite file shared by the processes of one host."""

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 10.0) -> None:
        self.path = path
        self.busy_timeout_seconds = busy_timeout_seconds
        self._schemas: list[str] = []
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def add_schema(self, ddl: str) -> None:
        """Register ``CREATE ... IF NOT EXISTS`` statements run at open."""
        self._schemas.append(ddl)

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_seconds,
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=True,
        )
        try:
            retry_while_busy(lambda: self._prepare(conn), timeout_seconds=self.busy_timeout_seconds)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        switch_to_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        for ddl in self._schemas:  # IF NOT EXISTS, so a retry may run them again
            conn.executescript(ddl)

    async def open(self) -> None:
        """Start the thread, open the file in WAL mode and create the tables."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="app_kernel-sqlite")
        await self._submit(self._connect)

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            msg = f"the embedded store {self.path} is not open"
            raise BackendUnavailable(msg)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            msg = f"embedded store {self.path}: {exc}"
            raise BackendUnavailable(msg) from exc

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store's thread, outside a transaction."""
        return await self._submit(lambda: fn(self._connection()))

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in ``BEGIN IMMEDIATE`` ... ``COMMIT``.

        The write lock is taken at the start, so the read-then-write inside
        ``fn`` is atomic across every process using the file. An exception
        rolls everything back.
        """

        def run() -> T:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._submit(run)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            msg = f"the embedded store {self.path} is not open"
            raise BackendUnavailable(msg)
        return self._conn

    async def ping(self) -> None:
        """Read from the file; raises :class:`BackendUnavailable` on failure."""
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        if self._executor is None:
            return

        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await self._submit(close_conn)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None
