"""Opening a SQLite file while another process holds its write lock.

Several processes that open a new file at once race to switch it to WAL. SQLite
refuses that switch at once, without calling its busy handler, while another
connection holds the write lock of a file still in rollback mode; a CI run
failed on it. Both openers wait instead: the embedded store and the SQL
database. The holder here is a second connection on its own thread, which
SQLite treats as it treats another process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from app_kernel._sqlite.store import SqliteStore
from app_kernel.db.engine import Database
from app_kernel.db.tables import kernel_metadata
from app_kernel.errors import BackendUnavailable

SCHEMA = "CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY);"


@asynccontextmanager
async def write_lock_held(path: Path, *, seconds: float) -> AsyncIterator[None]:
    """Hold the write lock of ``path`` (rollback mode) for ``seconds`` on another thread."""
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS other (id INTEGER)")
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            threading.Event().wait(seconds)
            conn.execute("COMMIT")
        finally:
            conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 5), "the holder never took the lock"
        yield
    finally:
        await asyncio.to_thread(holder.join)


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        mode: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return mode
    finally:
        conn.close()


def _names(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


async def test_open_waits_for_a_write_lock_held_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    store = SqliteStore(path, busy_timeout_seconds=10)
    store.add_schema(SCHEMA)
    async with write_lock_held(path, seconds=0.3):
        await store.open()
    try:
        await store.transaction(lambda conn: conn.execute("INSERT INTO probe VALUES (1)"))
        rows = await store.read(lambda conn: conn.execute("SELECT id FROM probe").fetchall())
        assert rows == [(1,)]
    finally:
        await store.close()
    assert _journal_mode(path) == "wal"


async def test_open_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "kernel.db"
    store = SqliteStore(path, busy_timeout_seconds=0.2)
    store.add_schema(SCHEMA)
    async with write_lock_held(path, seconds=1.5):
        with pytest.raises(BackendUnavailable, match="database is locked") as caught:
            await store.open()
    assert str(path) in str(caught.value)
    with pytest.raises(BackendUnavailable, match="not open"):
        await store.ping()
    await store.close()


async def test_an_error_other_than_busy_is_not_retried(tmp_path: Path) -> None:
    """A broken schema fails at once; retrying it for an hour would hang start-up."""
    store = SqliteStore(tmp_path / "kernel.db", busy_timeout_seconds=3600)
    store.add_schema("CREATE TABLE broken (id INTEGER) garbage")
    with pytest.raises(BackendUnavailable, match="unknown table option"):
        await store.open()
    await store.close()


async def test_database_open_waits_for_a_write_lock_held_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    async with write_lock_held(path, seconds=0.3):
        await database.open()
    try:
        async with database.engine.connect() as conn:
            tables = await conn.execute(text("SELECT name FROM sqlite_master"))
            assert set(kernel_metadata.tables) <= set(tables.scalars())
    finally:
        await database.close()
    assert _journal_mode(path) == "wal"


async def test_database_leaves_a_uri_filename_to_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``?uri=true`` the name is SQLite's to read, not a path to create folders for."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    database = Database("sqlite+aiosqlite:///file:data/kernel.db?uri=true")
    await database.open()
    try:
        await database.ping()
    finally:
        await database.close()
    assert _names(tmp_path) == ["data"]  # no "file:data" folder
    assert _journal_mode(tmp_path / "data" / "kernel.db") == "wal"
