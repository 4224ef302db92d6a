"""The stream-lease contract, run on the embedded SQLite file and on Redis.

Expiry tests sleep for real (Redis counts deadlines on its own clock) with
TTLs of a fraction of a second, set on the limiter after it is built.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from _redis_trips import count_redis_writes
from app_kernel._redis.client import close_redis
from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.errors import BackendUnavailable
from app_kernel.settings import StreamingSettings
from app_kernel.streaming import StreamLeaseLimiter, StreamLimitExceeded, stream_lease
from app_kernel.streaming.backends.base import LeaseBackend, LeaseGrant, LeaseStatus
from app_kernel.streaming.backends.redis import RedisLeaseBackend
from app_kernel.streaming.backends.sqlite import SqliteLeaseBackend

LIMIT = 3

WEIRD_IDS = [
    "",
    "x" * 10_000,
    "ünïcödé 用户 🔑",
    "{braces}",
    "a{b}c",
    "with:colons and spaces",
    "\x00nul\r\n",
    "\udcff\udcfe",  # lone surrogates: undecodable bytes via surrogateescape
]


def _limiter(
    backend: LeaseBackend, *, ttl: float = 60, refresh: float | None = None
) -> StreamLeaseLimiter:
    limiter = StreamLeaseLimiter(
        backend, StreamingSettings(max_concurrent_per_user=LIMIT, backend_timeout_seconds=2)
    )
    limiter.lease_ttl_seconds = ttl
    limiter.refresh_interval_seconds = refresh if refresh is not None else ttl / 3
    return limiter


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
async def backend(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LeaseBackend]:
    """Each backend in turn: SQLite in ``tmp_path``, or Redis under a unique prefix."""
    if coordination_url is None:
        store = SqliteStore(tmp_path / "kernel.db")
        sqlite_backend = SqliteLeaseBackend(store)  # before open(): it registers its schema
        await store.open()
        try:
            yield sqlite_backend
        finally:
            await store.close()
    else:
        prefix: str = request.getfixturevalue("redis_key_prefix")
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            yield RedisLeaseBackend(client, RedisKeys(prefix))
        finally:
            await client.aclose()


@pytest.fixture
def leases(backend: LeaseBackend) -> StreamLeaseLimiter:
    """A limiter of 3 leases per user with a 60 s TTL."""
    limiter: StreamLeaseLimiter = _limiter(backend)
    return limiter


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# --- the limiter -------------------------------------------------------------------------


async def test_acquire_up_to_the_limit_then_none(leases: StreamLeaseLimiter) -> None:
    granted = [await leases.acquire_stream_lease("u") for _ in range(LIMIT)]

    assert all(granted)
    assert len(set(granted)) == LIMIT
    assert await leases.acquire_stream_lease("u") is None
    assert await leases.get_active_streams("u") == LIMIT
    assert await leases.can_start_stream("u") is False


async def test_users_have_separate_limits(leases: StreamLeaseLimiter) -> None:
    for _ in range(LIMIT):
        assert await leases.acquire_stream_lease("alice")

    assert await leases.acquire_stream_lease("bob") is not None
    assert await leases.get_active_streams("bob") == 1


async def test_release_frees_a_slot(leases: StreamLeaseLimiter) -> None:
    held = [await leases.acquire_stream_lease("u") for _ in range(LIMIT)]
    assert held[0] is not None

    await leases.release_stream_lease("u", held[0])

    assert await leases.get_active_streams("u") == LIMIT - 1
    assert await leases.acquire_stream_lease("u") is not None
    assert await leases.acquire_stream_lease("u") is None


async def test_releasing_unknown_or_released_leases_is_a_noop(
    leases: StreamLeaseLimiter,
) -> None:
    lease = await leases.acquire_stream_lease("u")
    assert lease is not None

    await leases.release_stream_lease("u", lease)
    await leases.release_stream_lease("u", lease)
    await leases.release_stream_lease("u", "never-issued")
    await leases.release_stream_lease("nobody", "never-issued")

    assert await leases.get_active_streams("u") == 0


async def test_acquiring_a_held_lease_id_again_takes_no_second_slot(
    backend: LeaseBackend,
) -> None:
    """A retried acquire (same id) extends the lease instead."""
    assert (await backend.acquire("u", "lease-1", 1, 60)).granted
    assert (await backend.acquire("u", "lease-1", 1, 60)).granted
    assert (await backend.status("u")).active == 1
    assert not (await backend.acquire("u", "lease-2", 1, 60)).granted


async def test_lease_expires_after_its_ttl(backend: LeaseBackend) -> None:
    leases = _limiter(backend, ttl=0.3)
    held = [await leases.acquire_stream_lease("u") for _ in range(LIMIT)]
    assert held[0] is not None
    assert await leases.acquire_stream_lease("u") is None

    await asyncio.sleep(0.45)

    assert await leases.get_active_streams("u") == 0
    assert await leases.oldest_lease_expires_in("u") == 0
    assert await leases.refresh_stream_lease("u", held[0]) is False
    assert await leases.acquire_stream_lease("u") is not None


async def test_refresh_extends_a_live_lease(backend: LeaseBackend) -> None:
    leases = _limiter(backend, ttl=0.6)
    lease = await leases.acquire_stream_lease("u")
    other = await leases.acquire_stream_lease("u")
    assert lease is not None
    assert other is not None

    await asyncio.sleep(0.4)
    assert await leases.refresh_stream_lease("u", lease) is True
    await asyncio.sleep(0.35)  # 0.75 s after acquiring: only the refreshed one lives

    assert await leases.get_active_streams("u") == 1
    assert await leases.refresh_stream_lease("u", other) is False
    assert await leases.refresh_stream_lease("u", lease) is True


async def test_refreshing_unknown_or_released_leases_returns_false(
    leases: StreamLeaseLimiter,
) -> None:
    lease = await leases.acquire_stream_lease("u")
    assert lease is not None
    await leases.release_stream_lease("u", lease)

    assert await leases.refresh_stream_lease("u", lease) is False
    assert await leases.refresh_stream_lease("u", "never-issued") is False
    assert await leases.get_active_streams("u") == 0


async def test_active_streams_count_only_live_leases(backend: LeaseBackend) -> None:
    short = _limiter(backend, ttl=0.3)
    long = _limiter(backend, ttl=60)
    assert await short.acquire_stream_lease("u")
    assert await long.acquire_stream_lease("u")
    assert await short.get_active_streams("u") == 2

    await asyncio.sleep(0.45)

    assert await short.get_active_streams("u") == 1
    assert await short.get_active_streams("someone-else") == 0


async def test_retry_after_is_the_time_until_the_oldest_lease_expires(
    backend: LeaseBackend,
) -> None:
    leases = _limiter(backend, ttl=10)
    assert await leases.oldest_lease_expires_in("u") == 0
    assert await leases.acquire_stream_lease("u")
    await asyncio.sleep(0.3)
    for _ in range(LIMIT - 1):
        assert await leases.acquire_stream_lease("u")

    attempt = await leases.try_acquire("u")

    assert attempt.lease_id is None
    assert 8.5 <= attempt.retry_after_seconds <= 9.71
    assert 8.5 <= await leases.oldest_lease_expires_in("u") <= 9.71


async def test_odd_user_ids_are_stored_safely(leases: StreamLeaseLimiter) -> None:
    for user in WEIRD_IDS:
        held = [await leases.acquire_stream_lease(user) for _ in range(LIMIT)]
        assert all(held), repr(user)
        assert await leases.acquire_stream_lease(user) is None
        assert await leases.get_active_streams(user) == LIMIT
        assert held[0] is not None
        assert await leases.refresh_stream_lease(user, held[0]) is True
        await leases.release_stream_lease(user, held[0])
        assert await leases.get_active_streams(user) == LIMIT - 1
    # Odd lease ids (from a caller) are looked up, never stored.
    for lease_id in WEIRD_IDS:
        await leases.release_stream_lease("u", lease_id)
        assert await leases.refresh_stream_lease("u", lease_id) is False


async def test_many_concurrent_acquires_grant_exactly_the_limit(
    leases: StreamLeaseLimiter,
) -> None:
    results = await asyncio.gather(*(leases.acquire_stream_lease("u") for _ in range(60)))

    assert sum(lease is not None for lease in results) == LIMIT


# --- stream_lease ------------------------------------------------------------------------


async def test_stream_lease_is_released_on_normal_exit(leases: StreamLeaseLimiter) -> None:
    async with stream_lease("u", limiter=leases) as lease:
        assert lease.is_held
        assert await leases.get_active_streams("u") == 1

    assert lease.lease_id is None
    assert await leases.get_active_streams("u") == 0


async def test_stream_lease_is_released_on_an_exception(leases: StreamLeaseLimiter) -> None:
    async def failing_stream() -> None:
        async with stream_lease("u", limiter=leases):
            assert await leases.get_active_streams("u") == 1
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        await failing_stream()

    assert await leases.get_active_streams("u") == 0


async def test_stream_lease_is_released_on_cancellation(leases: StreamLeaseLimiter) -> None:
    entered = asyncio.Event()

    async def stream() -> None:
        async with stream_lease("u", limiter=leases):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stream())
    await entered.wait()
    assert await leases.get_active_streams("u") == 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await leases.get_active_streams("u") == 0


async def test_stream_lease_over_the_limit_raises_a_429(leases: StreamLeaseLimiter) -> None:
    for _ in range(LIMIT):
        assert await leases.acquire_stream_lease("u")

    with pytest.raises(StreamLimitExceeded) as caught:
        async with stream_lease("u", limiter=leases):
            pytest.fail("the block must not run")

    assert caught.value.status_code == 429
    assert 59 <= caught.value.retry_after_seconds <= 60
    assert caught.value.headers == {"Retry-After": "60"}
    assert await leases.get_active_streams("u") == LIMIT


async def test_background_refresh_keeps_a_long_stream_alive(backend: LeaseBackend) -> None:
    leases = _limiter(backend, ttl=0.4, refresh=0.1)

    async with stream_lease("u", limiter=leases) as lease:
        await asyncio.sleep(1.0)  # 2.5 TTLs
        assert lease.is_held
        assert await leases.get_active_streams("u") == 1
        assert await lease.refresh() is True

    assert await leases.get_active_streams("u") == 0


async def test_refresh_without_await_schedules_it(backend: LeaseBackend) -> None:
    """The spec calls ``lease.refresh()`` bare; that must work and warn about nothing."""
    leases = _limiter(backend, ttl=0.4, refresh=10)

    async with stream_lease("u", limiter=leases) as lease:
        for _ in range(5):
            await asyncio.sleep(0.15)
            lease.refresh()
        await asyncio.sleep(0.1)
        assert await leases.get_active_streams("u") == 1  # 0.85 s > TTL
        assert await lease.refresh() is True

    assert await leases.get_active_streams("u") == 0


async def test_a_lost_lease_is_reported(backend: LeaseBackend) -> None:
    leases = _limiter(backend, ttl=0.3, refresh=10)

    async with stream_lease("u", limiter=leases) as lease:
        await asyncio.sleep(0.45)
        assert await lease.refresh() is False
        assert lease.lost
        assert not lease.is_held


# --- failing closed ----------------------------------------------------------------------


class _HangingBackend:
    async def acquire(self, user_id: str, lease_id: str, limit: int, ttl: float) -> LeaseGrant:
        await asyncio.sleep(60)
        raise AssertionError

    async def release(self, user_id: str, lease_id: str) -> None:
        await asyncio.sleep(60)

    async def refresh(self, user_id: str, lease_id: str, ttl_seconds: float) -> bool:
        await asyncio.sleep(60)
        raise AssertionError

    async def status(self, user_id: str) -> LeaseStatus:
        await asyncio.sleep(60)
        raise AssertionError


async def test_a_slow_backend_fails_closed() -> None:
    leases = StreamLeaseLimiter(_HangingBackend(), StreamingSettings(backend_timeout_seconds=0.05))

    for call in (
        leases.acquire_stream_lease("u"),
        leases.refresh_stream_lease("u", "l"),
        leases.get_active_streams("u"),
        leases.release_stream_lease("u", "l"),
    ):
        with pytest.raises(BackendUnavailable, match="backend_timeout_seconds"):
            await call
    with pytest.raises(BackendUnavailable):
        async with stream_lease("u", limiter=leases):
            pytest.fail("the block must not run")


async def test_sqlite_locked_by_another_process_fails_closed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kernel.db")
    leases = StreamLeaseLimiter(
        SqliteLeaseBackend(store), StreamingSettings(backend_timeout_seconds=0.2)
    )
    await store.open()
    other = sqlite3.connect(tmp_path / "kernel.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendUnavailable):
            await leases.acquire_stream_lease("u")
        other.execute("ROLLBACK")
        assert await leases.acquire_stream_lease("u") is not None
    finally:
        other.close()
        await store.close()


async def test_redis_errors_become_backend_unavailable(redis_key_prefix: str) -> None:
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    leases = StreamLeaseLimiter(RedisLeaseBackend(client, RedisKeys(redis_key_prefix)))
    try:
        with pytest.raises(BackendUnavailable, match="acquire"):
            await leases.acquire_stream_lease("u")
        with pytest.raises(BackendUnavailable, match="refresh"):
            await leases.refresh_stream_lease("u", "l")
        with pytest.raises(BackendUnavailable, match="release"):
            await leases.release_stream_lease("u", "l")
        with pytest.raises(BackendUnavailable, match="status"):
            await leases.get_active_streams("u")
    finally:
        await client.aclose()


# --- Redis only ----------------------------------------------------------------------------


async def test_redis_recovers_from_a_flushed_script_cache(
    redis_client: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    """``SCRIPT FLUSH`` (a restart or failover) costs a reload, not an error."""
    leases = _limiter(RedisLeaseBackend(redis_client, RedisKeys(redis_key_prefix)))
    lease = await leases.acquire_stream_lease("u")
    assert lease is not None

    await redis_client.script_flush()
    assert await leases.acquire_stream_lease("u") is not None
    await redis_client.script_flush()
    assert await leases.refresh_stream_lease("u", lease) is True
    await redis_client.script_flush()
    assert await leases.get_active_streams("u") == 2


async def test_redis_key_is_bounded_tagged_and_expires(
    redis_client: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    leases = _limiter(RedisLeaseBackend(redis_client, RedisKeys(redis_key_prefix)), ttl=30)
    for user in WEIRD_IDS:
        assert await leases.acquire_stream_lease(user)

    keys = [key.decode() async for key in redis_client.scan_iter(match=f"{redis_key_prefix}*")]

    shape = re.compile(re.escape(redis_key_prefix) + r"lease:\{[A-Za-z0-9._-]{1,64}\}:streams")
    assert len(keys) == len(WEIRD_IDS)
    assert all(shape.fullmatch(key) for key in keys), keys
    assert max(len(key) for key in keys) < 100
    for key in keys:
        assert 20_000 < await redis_client.pttl(key) <= 30_000


async def test_redis_key_disappears_when_its_leases_do(
    redis_client: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    backend = RedisLeaseBackend(redis_client, RedisKeys(redis_key_prefix))
    leases = _limiter(backend, ttl=0.3)
    kept = await leases.acquire_stream_lease("u")
    released = await leases.acquire_stream_lease("u")
    assert kept is not None
    assert released is not None

    await leases.release_stream_lease("u", released)
    assert await redis_client.exists(backend.key("u")) == 1
    await asyncio.sleep(0.45)

    assert await redis_client.exists(backend.key("u")) == 0


async def test_redis_does_one_round_trip_per_operation(
    redis_url: str, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = count_redis_writes(monkeypatch)
    client = redis.asyncio.Redis.from_url(redis_url)
    leases = _limiter(RedisLeaseBackend(client, RedisKeys(redis_key_prefix)))
    lease = "warm-up"
    operations: dict[str, Callable[[], Awaitable[Any]]] = {
        "acquire": lambda: leases.try_acquire("u"),
        "refresh": lambda: leases.refresh_stream_lease("u", lease),
        "release": lambda: leases.release_stream_lease("u", lease),
        "status": lambda: leases.get_active_streams("u"),
        "oldest_lease_expires_in": lambda: leases.oldest_lease_expires_in("u"),
    }
    try:
        for operation in operations.values():  # connect and load every script
            await operation()
        trips: dict[str, int] = {}
        for name, operation in operations.items():
            for _ in range(3):
                sent.clear()
                result = await operation()
                if name == "acquire":
                    lease = result.lease_id
                # Another test run may flush the shared server's scripts meanwhile.
                if not any(b"SCRIPT" in sent for sent in sent):
                    break
            trips[name] = len(sent)
    finally:
        await close_redis(client)

    assert trips == dict.fromkeys(operations, 1)


async def test_redis_deadlines_come_from_the_server_clock(
    redis_client: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    backend = RedisLeaseBackend(redis_client, RedisKeys(redis_key_prefix))
    assert (await backend.acquire("u", "l", 1, 5)).granted

    score = await redis_client.zscore(backend.key("u"), "l")
    seconds, micros = await redis_client.time()

    assert score is not None
    assert abs(score / 1000 - (seconds + micros / 1e6 + 5)) < 1
    assert abs(score / 1000 - (time.time() + 5)) < 5
