"""Stream-lease throughput: acquire+release pairs per second on Redis and SQLite.

Usage::

    python benchmarks/bench_leases.py [--redis-url redis://127.0.0.1:6379/0] [--seconds 2]

Prints pairs per second with 1 and 50 concurrent tasks, the Redis commands each
operation costs (from ``INFO commandstats`` deltas; other clients of the same
server inflate them) and a bare PING rate on the same client for reference.
No timed asserts: the numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio

from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.settings import StreamingSettings
from app_kernel.streaming import StreamLeaseLimiter
from app_kernel.streaming.backends.redis import RedisLeaseBackend
from app_kernel.streaming.backends.sqlite import SqliteLeaseBackend

SETTINGS = StreamingSettings(max_concurrent_per_user=5, backend_timeout_seconds=5)


async def rate(op: Callable[[int], Awaitable[object]], tasks: int, seconds: float) -> float:
    """Operations per second: ``tasks`` workers calling ``op(worker)`` for ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op(index)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return done / (time.perf_counter() - start)


def pair(leases: StreamLeaseLimiter, run: str) -> Callable[[int], Awaitable[None]]:
    async def op(index: int) -> None:
        user = f"{run}-{index}"
        lease = await leases.acquire_stream_lease(user)
        assert lease is not None
        await leases.release_stream_lease(user, lease)

    return op


async def commandstats(client: redis.asyncio.Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


async def commands_per_op(
    client: redis.asyncio.Redis, op: Callable[[], Awaitable[object]], count: int = 1000
) -> dict[str, float]:
    before = await commandstats(client)
    for _ in range(count):
        await op()
    after = await commandstats(client)
    deltas = {name: after[name] - before.get(name, 0) for name in after}
    deltas["info"] = deltas.get("info", 0) - 1  # our own second INFO
    return {name: delta / count for name, delta in sorted(deltas.items()) if delta > 0}


async def bench_redis(url: str, seconds: float) -> None:
    client = redis.asyncio.Redis.from_url(url, max_connections=100)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    backend = RedisLeaseBackend(client, RedisKeys(prefix))
    leases = StreamLeaseLimiter(backend, SETTINGS)
    try:
        await client.ping()
        await leases.get_active_streams("warm-up")
        ping_1 = await rate(lambda _: client.ping(), 1, seconds)
        ping_50 = await rate(lambda _: client.ping(), 50, seconds)
        pairs_1 = await rate(pair(leases, "a"), 1, seconds)
        pairs_50 = await rate(pair(leases, "b"), 50, seconds)
        print(f"redis  PING/s             1 task: {ping_1:9.0f}   50 tasks: {ping_50:9.0f}")
        print(f"redis  acquire+release/s  1 task: {pairs_1:9.0f}   50 tasks: {pairs_50:9.0f}")
        print(
            f"redis  pairs per PING     1 task: {pairs_1 / ping_1:9.2f}   "
            f"50 tasks: {pairs_50 / ping_50:9.2f}   (ideal 0.5: two round trips a pair)"
        )
        held: list[str] = []

        async def acquire() -> None:
            lease = await leases.acquire_stream_lease("c")
            assert lease is not None
            held.append(lease)

        async def release() -> None:
            await leases.release_stream_lease("c", held.pop())

        costs = {}
        for name, op in (
            ("acquire", acquire),
            ("release", release),
            ("get_active_streams", lambda: leases.get_active_streams("c")),
        ):
            # acquire/release alternate in batches below the limit
            if name == "acquire":
                total: dict[str, float] = {}
                for _ in range(200):
                    for cmd, n in (await commands_per_op(client, op, 5)).items():
                        total[cmd] = total.get(cmd, 0) + n / 200
                    for _ in range(5):
                        await release()
                costs[name] = total
            elif name == "release":
                for _ in range(5):
                    await acquire()
                costs[name] = await commands_per_op(client, release, 5)
            else:
                costs[name] = await commands_per_op(client, op)
        for name, cmds in costs.items():
            shown = ", ".join(f"{cmd}={n:.2f}" for cmd, n in cmds.items())
            print(f"redis  commands per {name:<19} {shown}")
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def bench_sqlite(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "kernel.db")
        leases = StreamLeaseLimiter(SqliteLeaseBackend(store), SETTINGS)
        await store.open()
        try:
            ping_1 = await rate(lambda _: store.ping(), 1, seconds)
            pairs_1 = await rate(pair(leases, "a"), 1, seconds)
            pairs_50 = await rate(pair(leases, "b"), 50, seconds)
        finally:
            await store.close()
    print(f"sqlite SELECT 1/s         1 task: {ping_1:9.0f}")
    print(f"sqlite acquire+release/s  1 task: {pairs_1:9.0f}   50 tasks: {pairs_50:9.0f}")
    print(f"sqlite pairs per SELECT 1 1 task: {pairs_1 / ping_1:9.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    await bench_redis(args.redis_url, args.seconds)
    await bench_sqlite(args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
