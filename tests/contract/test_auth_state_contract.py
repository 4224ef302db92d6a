"""The AuthStateBackend contract, run on the embedded SQLite file and on Redis.

Expiry tests sleep for real (Redis counts TTLs on its own clock), with TTLs of
a fraction of a second.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from _redis_trips import count_redis_writes
from _script_flush import flush_after_reloads
from app_kernel._redis.client import close_redis
from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.auth.state.base import AuthStateBackend, FailureCount, RotateOutcome
from app_kernel.auth.state.redis import RedisAuthState
from app_kernel.auth.state.sqlite import SqliteAuthState
from app_kernel.errors import BackendUnavailable

WEIRD_KEYS = [
    "",
    "x" * 10_000,
    "ünïcödé 用户 🔑",
    "{braces}",
    "}{",
    "a{b}c",
    "with:colons and spaces",
    "\x00nul\r\n",
    "\udcff\udcfe",  # lone surrogates: undecodable bytes via surrogateescape
]


def _id() -> str:
    return uuid.uuid4().hex


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def redis_prefix(coordination_url: str | None, request: pytest.FixtureRequest) -> str | None:
    """The test's Redis key prefix, or None for SQLite."""
    if coordination_url is None:
        return None
    prefix: str = request.getfixturevalue("redis_key_prefix")
    return prefix


@pytest.fixture
async def state(
    coordination_url: str | None, redis_prefix: str | None, tmp_path: Path
) -> AsyncIterator[AuthStateBackend]:
    """Each backend in turn: SQLite in ``tmp_path``, or Redis under a unique prefix."""
    if coordination_url is None:
        store = SqliteStore(tmp_path / "kernel.db")
        backend = SqliteAuthState(store)  # before open(): it registers its schema
        await store.open()
        try:
            yield backend
        finally:
            await store.close()
    else:
        assert redis_prefix is not None
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            yield RedisAuthState(client, RedisKeys(redis_prefix))
        finally:
            await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client for the Redis-only tests."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# --- families ----------------------------------------------------------------------------


async def _family(state: AuthStateBackend, user: str = "user-1", jti: str = "j0") -> str:
    family = _id()
    await state.start_family(family, user, jti, await state.now() + 60)
    return family


async def test_rotate_replaces_the_current_token(state: AuthStateBackend) -> None:
    family = await _family(state)

    assert await state.rotate(family, "j0", "j1") is RotateOutcome.ROTATED
    assert await state.rotate(family, "j1", "j2") is RotateOutcome.ROTATED
    assert await state.family_user(family) == "user-1"


async def test_reuse_of_a_retired_token_revokes_the_family(state: AuthStateBackend) -> None:
    family = await _family(state)
    assert await state.rotate(family, "j0", "j1") is RotateOutcome.ROTATED

    assert await state.rotate(family, "j0", "attacker") is RotateOutcome.REUSED

    assert await state.family_user(family) is None
    assert await state.rotate(family, "j1", "j2") is RotateOutcome.REVOKED
    assert await state.rotate(family, "j0", "j3") is RotateOutcome.REVOKED


async def test_repeating_a_rotation_that_succeeded_is_not_reuse(state: AuthStateBackend) -> None:
    """A client retry after a lost reply sends the same (old, new) pair again."""
    family = await _family(state)
    assert await state.rotate(family, "j0", "j1") is RotateOutcome.ROTATED

    assert await state.rotate(family, "j0", "j1") is RotateOutcome.ROTATED

    assert await state.family_user(family) == "user-1"
    assert await state.rotate(family, "j1", "j2") is RotateOutcome.ROTATED


async def test_unknown_family_is_revoked(state: AuthStateBackend) -> None:
    assert await state.rotate(_id(), "j0", "j1") is RotateOutcome.REVOKED
    assert await state.family_user(_id()) is None


async def test_revoke_family(state: AuthStateBackend) -> None:
    family = await _family(state)

    assert await state.revoke_family(family) is True
    assert await state.revoke_family(family) is False
    assert await state.revoke_family(_id()) is False
    assert await state.rotate(family, "j0", "j1") is RotateOutcome.REVOKED
    assert await state.family_user(family) is None


async def test_family_user_of_live_revoked_and_unknown_families(state: AuthStateBackend) -> None:
    live = await _family(state, user="alice")
    revoked = await _family(state, user="bob")
    await state.revoke_family(revoked)

    assert await state.family_user(live) == "alice"
    assert await state.family_user(revoked) is None
    assert await state.family_user(_id()) is None


async def test_start_family_replaces_an_earlier_record(state: AuthStateBackend) -> None:
    family = await _family(state, user="alice")
    await state.revoke_family(family)

    await state.start_family(family, "bob", "k0", await state.now() + 60)

    assert await state.family_user(family) == "bob"
    assert await state.rotate(family, "k0", "k1") is RotateOutcome.ROTATED


async def test_family_expires(state: AuthStateBackend) -> None:
    family = _id()
    now = await state.now()
    await state.start_family(family, "user-1", "j0", now + 1)
    stillborn = _id()
    await state.start_family(stillborn, "user-1", "j0", now - 1)
    assert await state.family_user(family) == "user-1"
    assert await state.family_user(stillborn) is None

    await asyncio.sleep(1.2)

    assert await state.family_user(family) is None
    assert await state.rotate(family, "j0", "j1") is RotateOutcome.REVOKED
    assert await state.revoke_family(family) is False


async def test_concurrent_rotations_admit_exactly_one(state: AuthStateBackend) -> None:
    """One call rotates, the next is a reuse that revokes, the rest find the family revoked."""
    family = await _family(state)

    outcomes = await asyncio.gather(*(state.rotate(family, "j0", f"n{i}") for i in range(50)))

    assert outcomes.count(RotateOutcome.ROTATED) == 1
    assert outcomes.count(RotateOutcome.REUSED) == 1
    assert outcomes.count(RotateOutcome.REVOKED) == 48
    assert await state.family_user(family) is None


async def test_weird_ids_in_families(state: AuthStateBackend) -> None:
    for value in WEIRD_KEYS:
        await state.start_family(value, value, value, await state.now() + 60)
        assert await state.family_user(value) == value
        assert await state.rotate(value, value, value + "!") is RotateOutcome.ROTATED
        assert await state.revoke_family(value) is True


# --- user revocation ---------------------------------------------------------------------


async def test_user_state_defaults_when_nothing_is_recorded(state: AuthStateBackend) -> None:
    recorded = await state.user_state(_id())

    assert recorded.valid_after is None
    assert recorded.disabled is False


async def test_valid_after_never_moves_backwards(state: AuthStateBackend) -> None:
    user = _id()
    await state.set_valid_after(user, 1_700_000_000.25, 60)
    assert (await state.user_state(user)).valid_after == 1_700_000_000.25

    await state.set_valid_after(user, 1_600_000_000.0, 60)
    assert (await state.user_state(user)).valid_after == 1_700_000_000.25

    await state.set_valid_after(user, 1_800_000_000.123456, 60)
    assert (await state.user_state(user)).valid_after == 1_800_000_000.123456


async def test_disabled_set_and_clear(state: AuthStateBackend) -> None:
    user = _id()
    await state.set_valid_after(user, 1_700_000_000.0, 60)

    await state.set_disabled(user, True, 60)
    recorded = await state.user_state(user)
    assert recorded.disabled is True
    assert recorded.valid_after == 1_700_000_000.0

    await state.set_disabled(user, False, 60)
    recorded = await state.user_state(user)
    assert recorded.disabled is False
    assert recorded.valid_after == 1_700_000_000.0

    other = _id()
    await state.set_disabled(other, True, 60)
    await state.set_disabled(other, False, 60)
    assert await state.user_state(other) == await state.user_state(_id())


async def test_user_records_expire_and_a_short_ttl_never_cuts_a_long_one(
    state: AuthStateBackend,
) -> None:
    short, long = _id(), _id()
    await state.set_valid_after(short, 1_700_000_000.0, 0.4)
    await state.set_disabled(short, True, 0.4)
    await state.set_valid_after(long, 1_700_000_000.0, 60)
    await state.set_disabled(long, True, 0.4)
    await state.set_valid_after(long, 1_600_000_000.0, 0.4)

    await asyncio.sleep(0.6)

    assert (await state.user_state(short)).valid_after is None
    assert (await state.user_state(short)).disabled is False
    assert (await state.user_state(long)).valid_after == 1_700_000_000.0


# --- failed-login counters ---------------------------------------------------------------


async def test_failures_count_per_key(state: AuthStateBackend) -> None:
    user, ip = f"user:{_id()}", f"ip:{_id()}"

    first = await state.add_failure([user, ip], 60)
    second = await state.add_failure([user], 60)

    assert [count.count for count in first] == [1, 1]
    assert [count.count for count in second] == [2]
    assert [count.count for count in await state.failures([user, ip, _id()])] == [2, 1, 0]


async def test_failure_window_starts_at_the_first_failure(state: AuthStateBackend) -> None:
    key = _id()
    [first] = await state.add_failure([key], 30)
    await asyncio.sleep(0.2)
    [second] = await state.add_failure([key], 30)
    [read] = await state.failures([key])

    assert 29 < first.retry_after_seconds <= 30
    assert 0 < second.retry_after_seconds <= first.retry_after_seconds - 0.1
    assert 0 < read.retry_after_seconds <= second.retry_after_seconds
    assert read.count == 2


async def test_unknown_counter_is_empty(state: AuthStateBackend) -> None:
    assert await state.failures([_id()]) == [FailureCount(0, 0.0)]
    assert await state.failures([]) == []
    assert await state.add_failure([], 60) == []


async def test_a_key_given_twice_counts_once(state: AuthStateBackend) -> None:
    key = _id()

    counts = await state.add_failure([key, key], 60)

    assert [count.count for count in counts] == [1, 1]
    assert (await state.failures([key]))[0].count == 1


async def test_failure_window_expiry_resets_the_count(state: AuthStateBackend) -> None:
    key = _id()
    await state.add_failure([key], 0.4)
    await state.add_failure([key], 0.4)

    await asyncio.sleep(0.6)

    assert await state.failures([key]) == [FailureCount(0, 0.0)]
    [again] = await state.add_failure([key], 60)
    assert again.count == 1
    assert again.retry_after_seconds > 59


async def test_clear_failures_clears_only_that_key(state: AuthStateBackend) -> None:
    user, ip = _id(), _id()
    await state.add_failure([user, ip], 60)

    await state.clear_failures(user)
    await state.clear_failures(_id())  # unknown: nothing happens

    assert [count.count for count in await state.failures([user, ip])] == [0, 1]


async def test_weird_counter_keys(state: AuthStateBackend) -> None:
    assert [c.count for c in await state.add_failure(WEIRD_KEYS, 60)] == [1] * len(WEIRD_KEYS)
    assert [c.count for c in await state.add_failure(WEIRD_KEYS, 60)] == [2] * len(WEIRD_KEYS)

    await state.clear_failures("{braces}")

    counts = [c.count for c in await state.failures(WEIRD_KEYS)]
    assert counts == [0 if key == "{braces}" else 2 for key in WEIRD_KEYS]


async def test_now_is_a_plausible_clock(state: AuthStateBackend) -> None:
    assert abs(await state.now() - time.time()) < 5


# --- Redis only ----------------------------------------------------------------------------


async def test_redis_recovers_from_a_flushed_script_cache(
    redis_client: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    """``SCRIPT FLUSH`` (a restart or failover) costs a reload, not an error."""
    state = RedisAuthState(redis_client, RedisKeys(redis_key_prefix))
    family = _id()
    await state.start_family(family, "u", "j0", await state.now() + 60)
    await state.add_failure(["a", "b"], 60)

    await redis_client.script_flush()

    assert await state.rotate(family, "j0", "j1") is RotateOutcome.ROTATED
    await redis_client.script_flush()
    assert [c.count for c in await state.add_failure(["a", "b", "c"], 60)] == [2, 2, 1]
    await redis_client.script_flush()
    await state.set_valid_after("u", 1.0, 60)
    await state.set_disabled("u", True, 60)
    assert await state.revoke_family(family) is True
    assert (await state.user_state("u")).disabled is True


async def test_redis_survives_a_flush_between_reload_and_retry(
    redis_client: redis.asyncio.Redis, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client's ``SCRIPT FLUSH`` right after a reload costs one more reload."""
    state = RedisAuthState(redis_client, RedisKeys(redis_key_prefix))
    family = _id()
    await state.start_family(family, "u", "j0", await state.now() + 60)
    left = flush_after_reloads(monkeypatch, redis_client, times=1)

    await redis_client.script_flush()
    assert await state.rotate(family, "j0", "j1") is RotateOutcome.ROTATED
    assert left == [0]
    left[0] = 1
    await redis_client.script_flush()
    assert [c.count for c in await state.add_failure(["a", "b"], 60)] == [1, 1]  # pipelined
    assert left == [0]


async def test_redis_keys_carry_the_prefix_and_one_hash_tag(
    redis_client: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    state = RedisAuthState(redis_client, RedisKeys(redis_key_prefix))
    await state.start_family("{fam}", "u", "j0", await state.now() + 60)
    await state.set_valid_after("user{1}", 1.0, 60)
    await state.set_disabled("user-2", True, 60)
    await state.add_failure(WEIRD_KEYS, 60)

    keys = [key.decode() async for key in redis_client.scan_iter(match=f"{redis_key_prefix}*")]

    shape = re.compile(
        re.escape(redis_key_prefix) + r"auth:\{[A-Za-z0-9._-]{1,64}\}:(fam|user|fail)"
    )
    assert len(keys) == 3 + len(WEIRD_KEYS)
    assert all(shape.fullmatch(key) for key in keys), keys
    assert max(len(key) for key in keys) < 100


async def test_redis_does_one_round_trip_per_operation(
    redis_url: str, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = count_redis_writes(monkeypatch)
    client = redis.asyncio.Redis.from_url(redis_url)
    state = RedisAuthState(client, RedisKeys(redis_key_prefix))
    family = _id()
    operations = {
        "start_family": lambda: state.start_family(family, "u", "j0", time.time() + 60),
        "rotate": lambda: state.rotate(family, "j0", "j1"),
        "revoke_family": lambda: state.revoke_family(family),
        "family_user": lambda: state.family_user(family),
        "set_valid_after": lambda: state.set_valid_after("u", 1.0, 60),
        "set_disabled": lambda: state.set_disabled("u", True, 60),
        "user_state": lambda: state.user_state("u"),
        "failures": lambda: state.failures(["a", "b", "c"]),
        "add_failure": lambda: state.add_failure(["a", "b", "c"], 60),
        "clear_failures": lambda: state.clear_failures("a"),
        "now": state.now,
    }
    try:
        for operation in operations.values():  # connect and load every script
            await operation()
        trips: dict[str, int] = {}
        for name, operation in operations.items():
            for _ in range(3):
                sent.clear()
                await operation()
                # Another test run may flush the shared server's scripts meanwhile.
                if not any(b"SCRIPT" in command for command in sent):
                    break
            trips[name] = len(sent)
    finally:
        await close_redis(client)

    assert trips == dict.fromkeys(operations, 1)


async def test_redis_errors_become_backend_unavailable(redis_key_prefix: str) -> None:
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    state = RedisAuthState(client, RedisKeys(redis_key_prefix))
    try:
        with pytest.raises(BackendUnavailable, match="rotate"):
            await state.rotate("f", "a", "b")
        with pytest.raises(BackendUnavailable):
            await state.add_failure(["a", "b"], 60)
        with pytest.raises(BackendUnavailable):
            await state.now()
        with pytest.raises(BackendUnavailable, match="user_state"):
            await state.user_state("u")
        with pytest.raises(BackendUnavailable, match="family_user"):
            await state.family_user("f")
    finally:
        await close_redis(client)


# --- SQLite only -----------------------------------------------------------------------------


async def test_sqlite_prunes_expired_rows(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kernel.db")
    state = SqliteAuthState(store, prune_interval_seconds=0)
    await store.open()
    try:
        now = await state.now()
        await state.start_family("old", "u", "j0", now + 0.2)
        await state.set_valid_after("old", 1.0, 0.2)
        await state.add_failure(["old"], 0.2)
        await asyncio.sleep(0.3)

        await state.start_family("new", "u", "j0", now + 60)
        await state.set_valid_after("new", 1.0, 60)
        await state.add_failure(["new"], 60)

        def names(conn: Any) -> list[list[str]]:
            return [
                [row[0] for row in conn.execute(f"SELECT {column} FROM {table}")]
                for table, column in (
                    ("auth_families", "family_id"),
                    ("auth_users", "user_id"),
                    ("auth_failures", "key"),
                )
            ]

        assert await store.read(names) == [["new"], ["new"], ["new"]]
    finally:
        await store.close()
