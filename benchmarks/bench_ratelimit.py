"""Rate-limit throughput against one Redis, from one process.

Compares, on the same server and event loop:

* ``RateLimiter.hit`` (one EVALSHA returning allowed/remaining/reset/retry-after,
  i.e. everything the headers need) with 1 and 50 concurrent tasks;
* the ``limits`` library's moving-window and sliding-window-counter strategies
  doing ``hit`` + ``get_window_stats`` (what headers need there), async storage;
* a bare ``PING`` on the same redis-py client.

Also prints Redis commands per operation from ``INFO commandstats`` deltas.
Run: ``python benchmarks/bench_ratelimit.py`` (``REDIS_URL`` or redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio
from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from redis.exceptions import NoScriptError

from app_kernel._redis.keys import RedisKeys
from app_kernel.reliability import RateLimiter
from app_kernel.reliability.backends.redis_ratelimit import RedisRateLimitBackend
from app_kernel.settings import ReliabilitySettings

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SECONDS = 3.0  # per measurement
IDENTIFIERS = 1000  # spread hits over many keys, each well under its limit
LIMIT = 100  # exact mode (<= 128)


async def retry_noscript(call: Callable[[], Awaitable[object]]) -> object:
    """limits' redis-py scripts can race their own reload under concurrency: retry once."""
    try:
        return await call()
    except NoScriptError:
        return await call()


async def commandstats(client: redis.asyncio.Redis) -> int:
    info = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_"))


async def measure(
    name: str,
    op: Callable[[int], Awaitable[object]],
    concurrency: int,
    stats_client: redis.asyncio.Redis,
) -> float:
    for i in range(50):  # warm up (script load, connections)
        await op(i)
    before = await commandstats(stats_client)
    count = 0
    deadline = time.perf_counter() + SECONDS
    started = time.perf_counter()

    async def worker(offset: int) -> None:
        nonlocal count
        i = offset
        while time.perf_counter() < deadline:
            await op(i)
            i += concurrency
            count += 1

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    after = await commandstats(stats_client)
    rate = count / elapsed
    per_op = (after - before - 1) / count  # -1: the INFO call itself
    print(f"{name:<48} c={concurrency:<3} {rate:>9,.0f} ops/s  {per_op:5.2f} redis cmds/op")
    return rate


async def main() -> None:
    run = uuid.uuid4().hex[:8]
    client = redis.asyncio.Redis.from_url(URL, max_connections=100)
    stats_client = redis.asyncio.Redis.from_url(URL)
    limiter = RateLimiter(
        RedisRateLimitBackend(client, RedisKeys(f"bench{run}:")),
        ReliabilitySettings(backend_timeout_seconds=5.0),
    )
    storage = storage_from_string(f"async+{URL}", implementation="redispy")
    moving = MovingWindowRateLimiter(storage)
    sliding = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerMinute(LIMIT)

    async def ours(i: int) -> object:
        result = await limiter.hit(f"user-{i % IDENTIFIERS}", LIMIT, 60)
        return result.remaining, result.reset_seconds

    async def limits_moving(i: int) -> object:
        key = f"bench{run}-m-{i % IDENTIFIERS}"
        await retry_noscript(lambda: moving.hit(item, key))
        return await retry_noscript(lambda: moving.get_window_stats(item, key))

    async def limits_sliding(i: int) -> object:
        key = f"bench{run}-s-{i % IDENTIFIERS}"
        await retry_noscript(lambda: sliding.hit(item, key))
        return await retry_noscript(lambda: sliding.get_window_stats(item, key))

    async def ping(i: int) -> object:
        return await client.ping()

    print(f"Redis at {URL}, {SECONDS:g}s per measurement, limit {LIMIT}/60s, exact mode")
    rates: dict[str, float] = {}
    for concurrency in (1, 50):
        rates[f"ours{concurrency}"] = await measure(
            "RateLimiter.hit (+ headers data)", ours, concurrency, stats_client
        )
        rates[f"moving{concurrency}"] = await measure(
            "limits moving window hit + get_window_stats", limits_moving, concurrency, stats_client
        )
        rates[f"sliding{concurrency}"] = await measure(
            "limits sliding counter hit + get_window_stats",
            limits_sliding,
            concurrency,
            stats_client,
        )
        rates[f"ping{concurrency}"] = await measure("bare PING", ping, concurrency, stats_client)
    print()
    for concurrency in (1, 50):
        ours_rate = rates[f"ours{concurrency}"]
        moving_ratio = ours_rate / rates[f"moving{concurrency}"]
        sliding_ratio = ours_rate / rates[f"sliding{concurrency}"]
        print(
            f"c={concurrency:<3} ours/limits-moving {moving_ratio:.2f}x"
            f"  ours/limits-sliding {sliding_ratio:.2f}x"
            f"  ours/PING {ours_rate / rates[f'ping{concurrency}']:.2f}x"
            "   (targets: >= 1.5x limits, >= 0.8x PING)"
        )
    keys = [key async for key in client.scan_iter(match=f"bench{run}*")]
    keys += [key async for key in client.scan_iter(match=f"LIMITS:LIMITER/bench{run}*")]
    for start in range(0, len(keys), 500):
        await client.unlink(*keys[start : start + 500])
    await client.aclose()
    await stats_client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
