"""The per-process revocation cache: expiry, shared loads, and forget() winning over a load."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from app_kernel.auth import revocation
from app_kernel.auth.revocation import TtlCache


class _Backend:
    """A load function that counts calls and answers only when released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.value = "v1"
        self.error: Exception | None = None

    async def load(self, key: str) -> str:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return f"{key}:{self.value}"


async def test_concurrent_misses_share_one_load() -> None:
    cache: TtlCache[str, str] = TtlCache(60)
    backend = _Backend()
    readers = [asyncio.create_task(cache.get("u1", backend.load)) for _ in range(50)]
    await asyncio.sleep(0)
    backend.release.set()
    assert await asyncio.gather(*readers) == ["u1:v1"] * 50
    assert backend.calls == 1
    assert await cache.get("u1", backend.load) == "u1:v1"
    assert backend.calls == 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache: TtlCache[str, str] = TtlCache(60)
    backend = _Backend()
    backend.error = RuntimeError("backend down")
    readers = [asyncio.create_task(cache.get("u1", backend.load)) for _ in range(5)]
    await asyncio.sleep(0)
    backend.release.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert [str(result) for result in results] == ["backend down"] * 5
    backend.error = None
    assert await cache.get("u1", backend.load) == "u1:v1"
    assert backend.calls == 2


@pytest.mark.parametrize(
    ("cancelled", "loads"),
    [
        ("waiter", 1),  # the shared load goes on for the caller that started it
        ("loader", 2),  # the waiter loads again itself
    ],
)
async def test_a_cancelled_caller_leaves_the_other_served(cancelled: str, loads: int) -> None:
    cache: TtlCache[str, str] = TtlCache(60)
    backend = _Backend()
    loader = asyncio.create_task(cache.get("u1", backend.load))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get("u1", backend.load))
    await asyncio.sleep(0)
    gone, kept = (waiter, loader) if cancelled == "waiter" else (loader, waiter)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    backend.release.set()
    assert await kept == "u1:v1"
    assert backend.calls == loads


async def test_forget_during_a_load_keeps_its_stale_answer_out_of_the_cache() -> None:
    cache: TtlCache[str, str] = TtlCache(60)
    backend = _Backend()
    before = asyncio.create_task(cache.get("u1", backend.load))
    await asyncio.sleep(0)
    cache.forget("u1")  # a local revocation happened while the read was in flight
    backend.value = "v2"
    backend.release.set()
    await before
    assert await cache.get("u1", backend.load) == "u1:v2"
    assert backend.calls == 2


async def test_entries_expire_and_the_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    # The module's own view of the clock only: patching time.monotonic itself
    # would move the event loop's clock too, and its slow-callback check would
    # measure the test from the real clock to the fake one.
    monkeypatch.setattr(revocation, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    cache: TtlCache[str, str] = TtlCache(1.0, max_entries=2)
    backend = _Backend()
    backend.release.set()
    assert await cache.get("a", backend.load) == "a:v1"
    backend.value = "v2"
    clock[0] += 0.5
    assert await cache.get("a", backend.load) == "a:v1"
    clock[0] += 0.6
    assert await cache.get("a", backend.load) == "a:v2"
    await cache.get("b", backend.load)
    await cache.get("c", backend.load)
    calls = backend.calls
    assert await cache.get("b", backend.load) == "b:v2"
    assert backend.calls == calls
    await cache.get("a", backend.load)  # "a" was the oldest and was evicted
    assert backend.calls == calls + 1


async def test_zero_ttl_always_asks_the_backend() -> None:
    cache: TtlCache[str, str] = TtlCache(0)
    backend = _Backend()
    backend.release.set()
    await cache.get("a", backend.load)
    await cache.get("a", backend.load)
    assert backend.calls == 2
