"""Async engine and session factory for SQLite (aiosqlite) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Table, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from app_kernel._sqlite.wal import ensure_wal_file
from app_kernel.db.tables import kernel_metadata
from app_kernel.errors import KernelError, MissingDependencyError

__all__ = ("Database",)

# Any constant works; it only has to be the same in every process of the service.
_SCHEMA_LOCK_ID = 0x61706B72
_BEGIN_IMMEDIATE = "app_kernel_begin_immediate"
_BUSY_TIMEOUT_SECONDS = 10


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 driver starts transactions lazily and behind SQLAlchemy's back,
    # which breaks SAVEPOINTs (a nested block's release would commit the outer
    # work). Autocommit at the driver, and an explicit BEGIN from SQLAlchemy, is
    # the documented cure; see _sqlite_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock at once. Database.open() asks for it:
    # a deferred transaction that has read the schema cannot write once another
    # process changed it ("database is locked"), which processes starting
    # together against an older build's file would otherwise hit.
    immediate = connection.get_execution_options().get(_BEGIN_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


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
        """Create the SQLite folder (file in WAL mode) and any missing kernel table."""
        database = self.url.database or ":memory:"
        # A URI filename ("file:...?...&uri=true") is SQLite's to interpret, memory included.
        if self.is_sqlite and database != ":memory:" and not database.startswith("file:"):
            await asyncio.to_thread(_prepare_sqlite_file, Path(database))
        # Several processes may start at once; one changes the schema, the others
        # wait for it: PostgreSQL's advisory lock, SQLite's write lock.
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(**{_BEGIN_IMMEDIATE: True})
            async with conn.begin():
                if not self.is_sqlite:
                    lock = text("SELECT pg_advisory_xact_lock(:id)")
                    await conn.execute(lock, {"id": _SCHEMA_LOCK_ID})
                for table in kernel_metadata.sorted_tables:
                    await conn.execute(CreateTable(table, if_not_exists=True))
                await _add_missing_columns(conn)
                for table in kernel_metadata.sorted_tables:
                    for index in table.indexes:
                        await conn.execute(CreateIndex(index, if_not_exists=True))

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises if the database does not answer."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _prepare_sqlite_file(path: Path) -> None:
    # In WAL mode before the engine connects: every pooled connection then finds
    # the file in WAL already, and its own PRAGMA needs no lock (see _sqlite.wal).
    path.parent.mkdir(parents=True, exist_ok=True)
    ensure_wal_file(path, timeout_seconds=_BUSY_TIMEOUT_SECONDS)


async def _add_missing_columns(conn: AsyncConnection) -> None:
    """Add the columns a newer kernel gave its tables to tables an older one made.

    The kernel's tables only ever gain nullable columns, and such a column is
    added empty (``ALTER TABLE ... ADD COLUMN``), so a database made by an older
    kernel keeps working. A missing column that could not be added that way is
    reported rather than guessed at.

    Raises:
        KernelError: a kernel table lacks a required (not nullable) column.
    """
    missing = await conn.run_sync(_missing_columns)
    preparer = conn.dialect.identifier_preparer
    for table, column in missing:
        if not column.nullable:
            msg = (
                f"table {table.name!r} lacks the required column {column.name!r}, which "
                "the kernel cannot add to existing rows; migrate the table or start "
                "from an empty database"
            )
            raise KernelError(msg)
        spec = CreateColumn(column).compile(dialect=conn.dialect)
        statement = f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {spec}"
        await conn.execute(text(statement))


def _missing_columns(conn: Connection) -> list[tuple[Table, Column[Any]]]:
    inspector = inspect(conn)
    missing: list[tuple[Table, Column[Any]]] = []
    for table in kernel_metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing += [(table, column) for column in table.columns if column.name not in present]
    return missing
