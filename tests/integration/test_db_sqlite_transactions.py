"""Transactions on the kernel's SQLite database behave as on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select

from app_kernel.db.engine import Database

_metadata = MetaData()
_rows = Table("probe_rows", _metadata, Column("id", Integer, primary_key=True))


@pytest.fixture
async def database(sql_database_url: str):  # type: ignore[no-untyped-def]
    db = Database(sql_database_url)
    await db.open()
    async with db.engine.begin() as conn:
        await conn.run_sync(_metadata.create_all)
    yield db
    await db.close()


async def _ids(db: Database) -> list[int]:
    async with db.sessions() as session:
        return list((await session.execute(select(_rows.c.id))).scalars())


async def test_released_savepoint_does_not_commit_the_outer_transaction(
    database: Database,
) -> None:
    """A nested block inside a transaction that rolls back leaves nothing behind."""
    async with database.sessions() as session, session.begin():
        async with session.begin_nested():
            await session.execute(_rows.insert().values(id=1))
        await session.rollback()
    assert await _ids(database) == []


async def test_rolled_back_savepoint_keeps_the_outer_work(database: Database) -> None:
    async with database.sessions() as session, session.begin():
        await session.execute(_rows.insert().values(id=1))
        nested = await session.begin_nested()
        await session.execute(_rows.insert().values(id=2))
        await nested.rollback()
    assert await _ids(database) == [1]
