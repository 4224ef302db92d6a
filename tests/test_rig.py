"""The test rig itself: real servers, isolation helpers, backend matrices, loop guard."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import pytest
import redis
import redis.asyncio

from _loop_guard import SLOW_CALLBACK_SECONDS, detect_blocking
from _services import asyncpg_dsn, delete_keys_with_prefix, sqlalchemy_postgres_url

# --- Redis -----------------------------------------------------------------------------


async def test_redis_url_pings(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


def test_redis_key_prefix_is_unique_and_namespaced(redis_key_prefix: str) -> None:
    assert redis_key_prefix.startswith("t")
    assert redis_key_prefix.endswith(":")
    assert len(redis_key_prefix) > 8


def test_delete_keys_with_prefix_removes_only_that_prefix(redis_url: str) -> None:
    mine = f"t{uuid.uuid4().hex[:12]}:"
    other = f"t{uuid.uuid4().hex[:12]}:"
    with redis.Redis.from_url(redis_url) as client:
        try:
            client.set(f"{mine}a", "1")
            client.hset(f"{mine}nested:b", mapping={"f": "v"})
            client.set(f"{other}keep", "1")

            assert delete_keys_with_prefix(redis_url, mine) == 2

            assert client.exists(f"{mine}a", f"{mine}nested:b") == 0
            assert client.get(f"{other}keep") == b"1"
        finally:
            client.delete(f"{other}keep")


def test_delete_keys_with_prefix_escapes_glob_characters(redis_url: str) -> None:
    base = f"t{uuid.uuid4().hex[:12]}"
    with redis.Redis.from_url(redis_url) as client:
        try:
            client.set(f"{base}x:k", "1")
            assert delete_keys_with_prefix(redis_url, f"{base}?:") == 0
            assert client.exists(f"{base}x:k") == 1
        finally:
            client.delete(f"{base}x:k")


def test_delete_keys_with_prefix_refuses_empty_prefix(redis_url: str) -> None:
    with pytest.raises(ValueError, match="empty prefix"):
        delete_keys_with_prefix(redis_url, "")


# --- PostgreSQL ------------------------------------------------------------------------


def test_postgres_url_is_sqlalchemy_asyncpg(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h:1/db", "postgresql+asyncpg://u@h:1/db"),
    ],
)
def test_postgres_url_conversion(given: str, expected: str) -> None:
    assert sqlalchemy_postgres_url(given) == expected
    assert asyncpg_dsn(given) == expected.replace("postgresql+asyncpg://", "postgresql://")


def test_postgres_url_conversion_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        sqlalchemy_postgres_url("mysql://u@h/db")


async def test_pg_database_url_is_fresh_and_writable(pg_database_url: str) -> None:
    assert pg_database_url.startswith("postgresql+asyncpg://")
    assert pg_database_url.rsplit("/", 1)[1].startswith("ak_test_")
    conn = await asyncpg.connect(asyncpg_dsn(pg_database_url))
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE rig (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO rig VALUES (1)")
        assert await conn.fetchval("SELECT id FROM rig") == 1
    finally:
        await conn.close()


def test_pg_database_url_is_unique_per_test(pg_database_url: str, postgres_url: str) -> None:
    assert pg_database_url != postgres_url
    assert pg_database_url.rsplit("/", 1)[0] == postgres_url.rsplit("/", 1)[0]


# --- backend matrices ------------------------------------------------------------------


def test_coordination_url_shapes(
    coordination_url: str | None, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.id == "sqlite":
        assert coordination_url is None
        assert request.node.get_closest_marker("redis") is None
        assert "redis_url" not in request.fixturenames
    else:
        assert coordination_url is not None
        assert coordination_url.startswith(("redis://", "rediss://", "unix://"))
        assert request.node.get_closest_marker("redis") is not None


def test_sql_database_url_shapes(sql_database_url: str, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.id == "sqlite":
        assert sql_database_url.startswith("sqlite+aiosqlite:////")
        assert sql_database_url.endswith("/app.db")
        assert "postgres_url" not in request.fixturenames
    else:
        assert sql_database_url.startswith("postgresql+asyncpg://")
        assert "/ak_test_" in sql_database_url
        assert request.node.get_closest_marker("postgres") is not None


def test_fixture_users_are_auto_marked(request: pytest.FixtureRequest, redis_url: str) -> None:
    assert request.node.get_closest_marker("redis") is not None
    assert request.node.get_closest_marker("postgres") is None


# --- environment -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "REDIS_URL",
        "DATABASE_URL",
        "JWT_SECRET",
        "DEBUG",
        "LOG_LEVEL",
        "CORS_ORIGINS",
        "RATE_LIMIT_REQUESTS",
        "RATE_LIMIT_WINDOW",
        "ALLOW_SELF_SIGNUP",
        "JWT_EXPIRY_HOURS",
    ],
)
def test_library_env_switch_is_cleared(name: str) -> None:
    assert name not in os.environ


def test_kernel_env_vars_are_cleared() -> None:
    assert not [name for name in os.environ if name.startswith("KERNEL_")]


# --- event-loop blocking guard ---------------------------------------------------------


def test_detect_blocking_reports_a_blocking_call() -> None:
    async def blocks() -> None:
        time.sleep(SLOW_CALLBACK_SECONDS * 2)  # noqa: ASYNC251 - the blocking call under test

    loop = asyncio.new_event_loop()
    try:
        with detect_blocking(loop) as reports:
            loop.run_until_complete(blocks())
        assert loop.get_debug() is False  # restored on exit
    finally:
        loop.close()
    assert len(reports) == 1
    assert reports[0].startswith("Executing ")
    assert "took" in reports[0]


def test_detect_blocking_ignores_awaited_sleeps() -> None:
    async def yields() -> None:
        await asyncio.sleep(SLOW_CALLBACK_SECONDS * 2)

    loop = asyncio.new_event_loop()
    try:
        with detect_blocking(loop) as reports:
            loop.run_until_complete(yields())
    finally:
        loop.close()
    assert reports == []


async def test_guard_is_active_for_async_tests() -> None:
    loop = asyncio.get_running_loop()
    assert loop.get_debug()
    assert loop.slow_callback_duration == SLOW_CALLBACK_SECONDS


@pytest.mark.allow_slow_callbacks
async def test_guard_can_be_opted_out() -> None:
    assert not asyncio.get_running_loop().get_debug()
    time.sleep(SLOW_CALLBACK_SECONDS * 1.5)  # noqa: ASYNC251 - allowed by the marker


def test_sync_tests_get_no_event_loop(request: pytest.FixtureRequest) -> None:
    assert not [name for name in request.fixturenames if name.startswith("_loop_guard_")]
    assert not [name for name in request.fixturenames if name.endswith("_scoped_runner")]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
