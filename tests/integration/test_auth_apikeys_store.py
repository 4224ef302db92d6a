"""ApiKeyStore against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select

from app_kernel.auth.apikeys import (
    API_KEY_LENGTH,
    ApiKeyStore,
    api_keys_table,
    parse_api_key,
)
from app_kernel.db.engine import Database


@pytest.fixture
async def database(sql_database_url: str) -> AsyncIterator[Database]:
    db = Database(sql_database_url)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def statements(database: Database) -> Iterator[list[str]]:
    """SQL statements run on ``database`` (first word, upper case), for counting."""
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]).split(None, 1)[0].upper())

    event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(database.engine.sync_engine, "before_cursor_execute", record)


async def _rows(database: Database) -> list[dict[str, object]]:
    async with database.engine.connect() as conn:
        result = await conn.execute(select(api_keys_table))
        return [dict(row) for row in result.mappings()]


async def test_create_then_verify_round_trip(database: Database) -> None:
    store = ApiKeyStore(database)
    plaintext, record = await store.create(user_id="u1", role="admin", name="ci deploy")

    assert len(plaintext) == API_KEY_LENGTH
    assert plaintext.startswith(f"ak_{record.key_id}_")
    assert record.prefix == f"ak_{record.key_id}"
    verified = await store.verify(plaintext)
    assert verified is not None
    assert (verified.key_id, verified.user_id, verified.role, verified.name) == (
        record.key_id,
        "u1",
        "admin",
        "ci deploy",
    )
    identity = verified.to_identity()
    assert (identity.id, identity.role, identity.auth_method) == ("u1", "admin", "apikey")


async def test_only_the_hash_is_stored(database: Database) -> None:
    store = ApiKeyStore(database)
    plaintext, record = await store.create(user_id="u1", role="user", name="n")
    parsed = parse_api_key(plaintext)
    assert parsed is not None
    key_id, secret = parsed

    (row,) = await _rows(database)
    assert row["key_id"] == key_id
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for value in row.values():
        assert secret not in str(value)
        assert plaintext not in str(value)
    assert "secret_hash" not in record.to_dict()
    assert secret not in repr(record)
    assert str(row["secret_hash"]) not in repr(record) + str(record.to_dict())


async def test_datetimes_come_back_utc_aware(database: Database) -> None:
    store = ApiKeyStore(database)
    expires = datetime.now(UTC) + timedelta(days=30)
    _, record = await store.create(user_id="u1", role="user", name="n", expires_at=expires)

    stored = await store.get(record.key_id)
    assert stored == record
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)
    assert stored.expires_at == expires


async def test_bad_inputs_are_refused(database: Database) -> None:
    store = ApiKeyStore(database)
    plaintext, _ = await store.create(user_id="u1", role="user", name="n")
    key_id, secret = plaintext[3:15], plaintext[16:]
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]

    for bad in (
        plaintext[:-1],  # truncated
        plaintext + "x",  # extended
        plaintext.upper(),
        f"ak_{key_id}_{other_secret}",  # wrong secret, same key id
        f"ak_{'0' * 12}_{secret}",  # unknown key id
        "",
        "garbage",
        " " + plaintext[1:],
        "ak_" + "x" * 10_240,  # 10 KB
        plaintext[:-1] + "\n",
    ):
        assert await store.verify(bad) is None, bad[:70]
    assert await store.verify(plaintext) is not None


def test_parse_api_key() -> None:
    key = "ak_0123456789ab_" + "a" * 43
    assert parse_api_key(key) == ("0123456789ab", "a" * 43)
    assert parse_api_key(key[:-1]) is None
    assert parse_api_key(key + "a") is None
    assert parse_api_key("ak_0123456789AB_" + "a" * 43) is None  # upper-case hex
    assert parse_api_key("ak_0123456789ab_" + "a" * 42 + "=") is None
    assert parse_api_key("ak_0123456789ab_" + "a" * 42 + "é") is None
    assert parse_api_key("x" * 100_000) is None


async def test_revoked_key_is_refused_at_once_through_the_same_store(database: Database) -> None:
    store = ApiKeyStore(database, cache_seconds=60)
    plaintext, record = await store.create(user_id="u1", role="user", name="n")
    assert await store.verify(plaintext) is not None

    assert await store.revoke(record.key_id) is True
    assert await store.revoke(record.key_id) is False  # already revoked
    assert await store.revoke("0" * 12) is False  # unknown
    assert await store.revoke("not-a-key-id") is False
    assert await store.verify(plaintext) is None
    revoked = await store.get(record.key_id)
    assert revoked is not None
    assert revoked.revoked_at is not None
    assert not revoked.is_active()


async def test_revocation_elsewhere_takes_effect_within_cache_seconds(database: Database) -> None:
    """Another process (another store) revokes; this one stops accepting within the bound."""
    verifier = ApiKeyStore(database, cache_seconds=0.05)
    admin = ApiKeyStore(database)
    plaintext, record = await verifier.create(user_id="u1", role="user", name="n")
    assert await verifier.verify(plaintext) is not None

    assert await admin.revoke(record.key_id) is True
    await asyncio.sleep(0.06)
    assert await verifier.verify(plaintext) is None


async def test_lookups_are_cached_positive_and_negative(
    database: Database, statements: list[str]
) -> None:
    store = ApiKeyStore(database, cache_seconds=60)
    plaintext, _ = await store.create(user_id="u1", role="user", name="n")
    unknown = "ak_" + "0" * 12 + "_" + plaintext[16:]
    statements.clear()

    for _ in range(5):
        assert await store.verify(plaintext) is not None
        assert await store.verify(unknown) is None
    assert statements.count("SELECT") == 2  # one per key id
    assert statements.count("UPDATE") == 1  # last_used_at, once per touch interval


async def test_concurrent_verifies_share_one_lookup(
    database: Database, statements: list[str]
) -> None:
    store = ApiKeyStore(database)
    plaintext, _ = await store.create(user_id="u1", role="user", name="n")
    statements.clear()

    results = await asyncio.gather(*(store.verify(plaintext) for _ in range(20)))

    assert all(result is not None for result in results)
    assert statements.count("SELECT") == 1
    assert statements.count("UPDATE") == 1


async def test_expired_key_is_refused(database: Database) -> None:
    store = ApiKeyStore(database)
    past = datetime.now(UTC) - timedelta(seconds=1)
    plaintext, record = await store.create(user_id="u1", role="user", name="n", expires_at=past)
    assert await store.verify(plaintext) is None
    assert not record.is_active()

    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    plaintext, _ = await store.create(user_id="u1", role="user", name="n", expires_at=soon)
    assert await store.verify(plaintext) is not None
    await asyncio.sleep(0.35)
    assert await store.verify(plaintext) is None  # cached record, but now expired


async def test_last_used_at_is_recorded_once_per_interval(
    database: Database, statements: list[str]
) -> None:
    store = ApiKeyStore(database, cache_seconds=0)
    plaintext, record = await store.create(user_id="u1", role="user", name="n")
    assert record.last_used_at is None
    before = datetime.now(UTC)
    statements.clear()

    verified = await store.verify(plaintext)
    assert verified is not None
    assert verified.last_used_at is not None
    stored = await store.get(record.key_id)
    assert stored is not None
    assert stored.last_used_at is not None
    assert before <= stored.last_used_at <= datetime.now(UTC)
    assert statements.count("UPDATE") == 1

    # A second process (store) also sees the recent last_used_at and skips the write.
    other = ApiKeyStore(database, cache_seconds=0)
    for _ in range(3):
        assert await store.verify(plaintext) is not None
        assert await other.verify(plaintext) is not None
    assert statements.count("UPDATE") == 1


async def test_last_used_at_is_rewritten_after_the_interval(database: Database) -> None:
    store = ApiKeyStore(database, cache_seconds=0, touch_interval_seconds=0.05)
    plaintext, record = await store.create(user_id="u1", role="user", name="n")
    first = await store.verify(plaintext)
    await asyncio.sleep(0.06)
    second = await store.verify(plaintext)
    assert first is not None
    assert second is not None
    assert first.last_used_at is not None
    assert second.last_used_at is not None
    assert second.last_used_at > first.last_used_at
    stored = await store.get(record.key_id)
    assert stored is not None
    assert stored.last_used_at == second.last_used_at


async def test_list_filters_by_user_and_revocation(database: Database) -> None:
    store = ApiKeyStore(database)
    _, a1 = await store.create(user_id="alice", role="user", name="a1")
    _, a2 = await store.create(user_id="alice", role="user", name="a2")
    _, b1 = await store.create(user_id="bob", role="admin", name="b1")
    await store.revoke(a2.key_id)

    assert [r.key_id for r in await store.list()] == [a1.key_id, b1.key_id]
    assert [r.key_id for r in await store.list(user_id="alice")] == [a1.key_id]
    assert [r.key_id for r in await store.list(user_id="alice", include_revoked=True)] == [
        a1.key_id,
        a2.key_id,
    ]
    assert await store.list(user_id="nobody") == []
    assert await store.get("0" * 12) is None
    assert await store.get("bad") is None


async def test_create_in_caller_session_rolls_back_with_it(database: Database) -> None:
    store = ApiKeyStore(database)
    async with database.sessions() as session:
        plaintext, record = await store.create(user_id="u1", role="user", name="n", session=session)
        await session.rollback()

    assert await _rows(database) == []
    assert await store.get(record.key_id) is None
    assert await store.verify(plaintext) is None


async def test_create_and_revoke_in_caller_session_commit_with_it(database: Database) -> None:
    store = ApiKeyStore(database)
    async with database.sessions() as session, session.begin():
        plaintext, record = await store.create(user_id="u1", role="user", name="n", session=session)
    assert await store.verify(plaintext) is not None

    async with database.sessions() as session:
        assert await store.revoke(record.key_id, session=session) is True
        await session.rollback()
    assert await store.verify(plaintext) is not None

    async with database.sessions() as session, session.begin():
        assert await store.revoke(record.key_id, session=session) is True
    assert await store.verify(plaintext) is None


async def test_invalid_create_arguments_are_refused(database: Database) -> None:
    store = ApiKeyStore(database)
    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
    with pytest.raises(ValueError, match="expires_at"):
        await store.create(user_id="u1", role="user", name="n", expires_at=naive)
    with pytest.raises(ValueError, match="name"):
        await store.create(user_id="u1", role="user", name=" ")
    with pytest.raises(ValueError, match="user_id"):
        await store.create(user_id="u" * 256, role="user", name="n")
    assert await _rows(database) == []
