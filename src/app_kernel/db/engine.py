"""Async engine and session factory for SQLite (aiosqlite) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.schema import CreateIndex, CreateTable

from app_kernel.db.tables import kernel_metadata
from app_kernel.errors import MissingDependencyError

__all__ = ("Database",)

# Any constant works; it only has to be the same in every process of the service.
_SCHEMA_LOCK_ID = 0x61706B72


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 driver starts transactions lazily and behind SQLAlchemy's back,
    # which breaks SAVEPOINTs (a nested block's release would commit the outer
    # work). Autocommit at the driver, and an explicit BEGIN from SQLAlchemy, is
    # the documented cure; see _sqlite_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


class Database:
    """The kernel's SQL database: one engine, one session factory per process."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if not self.is_sqlite and importlib.util.find_spec("asyncpg") is None:
            raise MissingDependencyError("asyncpg", "postgres", "a PostgreSQL database")  # noqa: EM101
        options: dict[str, Any] = {"pool_pre_ping": not self.is_sqlite}
        if not self.is_sqlite:
            options.update(pool_size=10, max_overflow=10)
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    async def open(self) -> None:
        """Create the SQLite folder and any kernel table that does not exist yet."""
        database = self.url.database
        if self.is_sqlite and database and database != ":memory:":
            await asyncio.to_thread(Path(database).parent.mkdir, parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Several API processes may start at once; one creates, the others wait.
                lock = text("SELECT pg_advisory_xact_lock(:id)")
                await conn.execute(lock, {"id": _SCHEMA_LOCK_ID})
            for table in kernel_metadata.sorted_tables:
                await conn.execute(CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    await conn.execute(CreateIndex(index, if_not_exists=True))

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises if the database does not answer."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
