"""The rate-limit contract, run on the embedded SQLite file and on Redis.

Windows are fractions of a second and the tests sleep for real: Redis counts
time on its own clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.errors import BackendUnavailable
from app_kernel.reliability import Limit, RateLimiter
from app_kernel.reliability.backends.base import LimitState
from app_kernel.reliability.backends.redis_ratelimit import RedisRateLimitBackend
from app_kernel.reliability.backends.sqlite_ratelimit import SqliteRateLimitBackend
from app_kernel.reliability.ratelimit import identifier_key
from app_kernel.settings import ReliabilitySettings

WEIRD_IDENTIFIERS: list[str | bytes] = [
    "",
    "x" * 10_000,
    "ünïcödé 用户 🔑",
    "{braces}",
    "a{b}c",
    "\x00nul\r\n",
    "\udcff\udcfe",
    b"\xff\xfe\x00binary",
]


class Rig:
    """A limiter on one backend plus a way to measure what it stores."""

    def __init__(
        self,
        backend: RedisRateLimitBackend | SqliteRateLimitBackend,
        client: redis.asyncio.Redis | None,
        prefix: str | None,
    ) -> None:
        self.backend = backend
        self.client = client
        self.prefix = prefix

    def limiter(self, **settings: Any) -> RateLimiter:
        values: dict[str, Any] = {"backend_timeout_seconds": 5.0}
        values.update(settings)
        return RateLimiter(self.backend, ReliabilitySettings(**values))

    async def stored(self, identifier: str | bytes, window_seconds: float) -> int:
        """Entries stored for ``identifier`` (log members + counter fields, or rows)."""
        key = identifier_key(identifier)
        if isinstance(self.backend, SqliteRateLimitBackend):
            return await self.backend.row_count(key)
        assert self.client is not None
        window_ms = Limit(1, window_seconds).window_ms
        total = 0
        for name in self.backend.key_names(key, frozenset({window_ms})):
            kind = (await self.client.type(name)).decode()
            if kind == "zset":
                total += int(await self.client.zcard(name))
            elif kind == "hash":
                total += int(await self.client.hlen(name))
        return total

    async def redis_keys(self) -> list[bytes]:
        assert self.client is not None
        assert self.prefix is not None
        return [key async for key in self.client.scan_iter(match=f"{self.prefix}*")]


@pytest.fixture
async def rig(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    """Each backend in turn: SQLite in ``tmp_path``, or Redis under a unique prefix."""
    if coordination_url is None:
        store = SqliteStore(tmp_path / "kernel.db")
        backend = SqliteRateLimitBackend(store, sweep_interval_seconds=0.0)
        await store.open()
        try:
            yield Rig(backend, None, None)
        finally:
            await store.close()
    else:
        prefix: str = request.getfixturevalue("redis_key_prefix")
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            yield Rig(RedisRateLimitBackend(client, RedisKeys(prefix)), client, prefix)
        finally:
            await client.aclose()


def _id() -> str:
    return uuid.uuid4().hex


async def test_limit_plus_one_is_refused(rig: Rig) -> None:
    limiter = rig.limiter()
    ident = _id()
    results = [await limiter.check(ident, 5, 10) for _ in range(6)]
    assert results == [True] * 5 + [False]


async def test_defaults_come_from_settings(rig: Rig) -> None:
    limiter = rig.limiter(rate_limit_requests=3, rate_limit_window_seconds=30)
    ident = _id()
    assert [await limiter.check(ident) for _ in range(4)] == [True, True, True, False]
    assert await limiter.get_remaining(ident) == 0


async def test_window_slides(rig: Rig) -> None:
    """Hits half a window old still count; a window later they do not."""
    limiter = rig.limiter()
    ident = _id()
    started = time.monotonic()
    assert [await limiter.check(ident, 3, 1.0) for _ in range(3)] == [True] * 3
    await asyncio.sleep(0.5)
    assert not await limiter.check(ident, 3, 1.0)
    result = await limiter.hit(ident, 3, 1.0)
    assert not result.allowed
    assert 0 < result.retry_after_seconds <= 1.0
    await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - started)))
    assert await limiter.check(ident, 3, 1.0)


async def test_retry_after_is_when_the_oldest_hit_leaves(rig: Rig) -> None:
    limiter = rig.limiter()
    ident = _id()
    assert await limiter.check(ident, 1, 2.0)
    await asyncio.sleep(0.5)
    result = await limiter.hit(ident, 1, 2.0)
    assert not result.allowed
    assert 1.2 <= result.retry_after_seconds <= 1.55


async def test_several_limits_are_all_or_nothing(rig: Rig) -> None:
    """A hit refused by the second limit does not consume the first."""
    limiter = rig.limiter()
    ident = _id()
    outcomes = [(await limiter.hit(ident, 5, 10, also=((2, 20),))).allowed for _ in range(6)]
    assert outcomes == [True, True, False, False, False, False]
    assert await limiter.get_remaining(ident, 5, 10) == 3
    assert await limiter.get_remaining(ident, 2, 20) == 0


async def test_result_reports_each_limit(rig: Rig) -> None:
    limiter = rig.limiter()
    ident = _id()
    result = await limiter.hit(ident, 5, 10, also=((300, 60),))
    assert result.allowed
    first, second = result.states
    assert (first.limit, first.remaining) == (Limit(5, 10), 4)
    assert (second.limit, second.remaining) == (Limit(300, 60), 299)
    assert 0 < first.reset_seconds <= 10
    assert result.remaining == 4
    assert result.retry_after_seconds == 0


async def test_refused_hits_are_never_stored(rig: Rig) -> None:
    limiter = rig.limiter()
    ident = _id()
    for _ in range(50):
        await limiter.check(ident, 3, 30)
    assert await rig.stored(ident, 30) == 3


async def test_idle_identifier_expires(rig: Rig) -> None:
    limiter = rig.limiter()
    ident = _id()
    assert await limiter.check(ident, 3, 0.3)
    assert await limiter.check(ident, 300, 0.3)  # counter mode too
    assert await rig.stored(ident, 0.3) > 0
    await asyncio.sleep(0.7)
    if rig.client is None:
        await limiter.check(_id(), 3, 0.3)  # SQLite sweeps on a later check
        assert await rig.stored(ident, 0.3) == 0
    else:
        assert await rig.redis_keys() == []


async def test_reset_forgets_every_hit(rig: Rig) -> None:
    limiter = rig.limiter()
    ident = _id()
    for _ in range(3):
        await limiter.hit(ident, 3, 30, also=((500, 45),))
    assert not await limiter.check(ident, 3, 30)
    await limiter.reset(ident)
    assert await limiter.get_remaining(ident, 3, 30) == 3
    assert await limiter.get_remaining(ident, 500, 45) == 500
    assert await limiter.check(ident, 3, 30)


async def test_get_remaining_records_nothing(rig: Rig) -> None:
    limiter = rig.limiter()
    ident = _id()
    assert await limiter.get_remaining(ident, 5, 10) == 5
    await limiter.check(ident, 5, 10)
    await limiter.check(ident, 5, 10)
    for _ in range(3):
        assert await limiter.get_remaining(ident, 5, 10) == 3
    assert await limiter.get_remaining(ident, 500, 10) == 500  # the counter is separate


async def test_counter_mode_stays_within_its_bound(rig: Rig) -> None:
    """Above the threshold: constant memory, and a burst gets limit..2*limit (documented)."""
    limiter = rig.limiter(exact_window_threshold=128)
    ident = _id()
    allowed = 0
    for _ in range(300):
        allowed += await limiter.check(ident, 200, 5)
    assert 200 <= allowed < 400
    assert await rig.stored(ident, 5) <= 2  # two fixed windows at most
    result = await limiter.hit(ident, 200, 5)
    assert not result.allowed
    assert 0 < result.retry_after_seconds <= 10


async def test_counter_mode_weighs_the_previous_window(rig: Rig) -> None:
    """Hits of the previous fixed window count in proportion to its overlap."""
    limiter = rig.limiter(exact_window_threshold=128)
    ident = _id()
    window = 1.0
    # Start just after a fixed-window boundary (windows are aligned to the epoch).
    await asyncio.sleep(window - (time.time() % window) + 0.02)
    for _ in range(200):
        await limiter.check(ident, 200, window)
    assert not await limiter.check(ident, 200, window)
    # A quarter into the next window, about 3/4 of the previous hits still count.
    await asyncio.sleep(window - (time.time() % window) + 0.25 * window)
    remaining = await limiter.get_remaining(ident, 200, window)
    assert 30 <= remaining <= 80


@pytest.mark.parametrize("identifier", WEIRD_IDENTIFIERS, ids=range(len(WEIRD_IDENTIFIERS)))
async def test_weird_identifiers_are_hashed(rig: Rig, identifier: str | bytes) -> None:
    limiter = rig.limiter()
    assert await limiter.check(identifier, 1, 30)
    assert not await limiter.check(identifier, 1, 30)
    assert await limiter.get_remaining(identifier, 1, 30) == 0
    await limiter.reset(identifier)
    assert await limiter.check(identifier, 1, 30)
    if rig.client is not None:
        keys = await rig.redis_keys()
        assert keys
        assert all(len(key) < 120 for key in keys)
        tag = identifier_key(identifier)
        assert all(f"{{{tag}}}".encode() in key for key in keys)


class _FailingBackend:
    """Stands in for a backend that errors or hangs (the real-Redis outage is in the HTTP tests)."""

    def __init__(self, *, hang: bool) -> None:
        self.hang = hang

    async def hit(self, key: str, limits: Any, exact_threshold: int) -> tuple[LimitState, ...]:
        if self.hang:
            await asyncio.sleep(10)
        msg = "down"
        raise BackendUnavailable(msg)

    peek = hit

    async def reset(self, key: str, windows_ms: frozenset[int]) -> None:
        raise BackendUnavailable("down")


@pytest.mark.parametrize("hang", [False, True], ids=["error", "timeout"])
async def test_backend_failure_fails_open_and_counts(hang: bool) -> None:
    settings = ReliabilitySettings(backend_timeout_seconds=0.05)
    limiter = RateLimiter(_FailingBackend(hang=hang), settings)
    result = await limiter.hit("x", 1, 10)
    assert result.allowed
    assert result.degraded
    assert await limiter.check("x", 1, 10)
    assert limiter.backend_failures == 2


async def test_backend_failure_fails_closed_when_asked() -> None:
    settings = ReliabilitySettings(backend_timeout_seconds=0.05, fail_open=False)
    limiter = RateLimiter(_FailingBackend(hang=True), settings)
    with pytest.raises(BackendUnavailable):
        await limiter.check("x", 1, 10)
    assert limiter.backend_failures == 1


async def test_shadow_mode_allows_and_counts(rig: Rig) -> None:
    limiter = rig.limiter(shadow_mode=True)
    ident = _id()
    results = [await limiter.hit(ident, 2, 30) for _ in range(4)]
    assert all(r.allowed for r in results)
    assert [r.shadowed for r in results] == [False, False, True, True]
    assert limiter.shadow_refusals == 2
    assert not await limiter.check(ident, 2, 30)  # check() itself is never shadowed
    assert await rig.stored(ident, 30) == 2


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="requests"):
        Limit(0, 10)
    with pytest.raises(ValueError, match="window"):
        Limit(1, 0)
