"""Per-call cost of EVALSHA: the kernel's redis.asyncio client against RedisMultiplexer.

Usage::

    python benchmarks/bench_redis_mux.py [--redis-url redis://127.0.0.1:6379/0]
        [--tasks 64] [--calls 20000] [--rounds 3] [--uvloop]

``--tasks`` workers share ``--calls`` EVALSHA calls of a tiny script (one key,
one argument, returns a small array: the rate limiter's shape). Each round runs
both clients, one after the other, on the same loop and server; the table shows
every round and the median. ``CPU µs/call`` is this process's CPU time (Redis runs
in its own process), ``wall µs/call`` the elapsed time divided by the calls.
The redis.asyncio client is built as the kernel builds it
(``create_redis_client``: a pool of 64 connections, socket timeouts, health
checks). No timed asserts: the numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from app_kernel._redis.client import create_redis_client
from app_kernel._redis.mux import LuaScript, RedisMultiplexer
from app_kernel.settings import RedisSettings

SCRIPT = LuaScript("return {redis.call('INCR', KEYS[1]), tonumber(ARGV[1])}")
KEYS = 64  # spread over a few keys, as requests from different clients would


async def measure(
    call: Callable[[int], Awaitable[object]], tasks: int, calls: int
) -> tuple[float, float]:
    """(CPU µs per call, wall µs per call) of ``calls`` calls shared by ``tasks`` workers."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call(remaining)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / calls * 1e6, wall / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{{k{i}}}" for i in range(KEYS)]
    settings = RedisSettings(url=args.redis_url, socket_timeout_seconds=5.0)
    client: Redis = create_redis_client(settings)
    mux = RedisMultiplexer.for_client(client, socket_timeout=settings.socket_timeout_seconds)
    sha = await client.script_load(SCRIPT.text)
    assert sha == SCRIPT.sha

    async def redis_py(i: int) -> object:
        return await client.evalsha(sha, 1, keys[i % KEYS], i)

    async def multiplexed(i: int) -> object:
        return await mux.evalsha(SCRIPT, (keys[i % KEYS],), (i,))

    assert await redis_py(7) == [1, 7]
    assert await multiplexed(7) == [2, 7]
    for call in (redis_py, multiplexed):  # warm up: connections, caches
        await measure(call, args.tasks, 2000)

    print(
        f"Redis at {args.redis_url}, {args.tasks} concurrent tasks, {args.calls:,} EVALSHA per"
        f" run, {'uvloop' if args.uvloop else 'asyncio'} event loop"
    )
    print(f"{'round':<8}{'client':<20}{'CPU µs/call':>14}{'wall µs/call':>14}")
    results: dict[str, list[tuple[float, float]]] = {"redis.asyncio": [], "RedisMultiplexer": []}
    for round_number in range(1, args.rounds + 1):
        for name, call in (("redis.asyncio", redis_py), ("RedisMultiplexer", multiplexed)):
            cpu, wall = await measure(call, args.tasks, args.calls)
            results[name].append((cpu, wall))
            print(f"{round_number:<8}{name:<20}{cpu:>14.1f}{wall:>14.1f}")
    medians = {
        name: (statistics.median(c for c, _ in rows), statistics.median(w for _, w in rows))
        for name, rows in results.items()
    }
    for name, (cpu, wall) in medians.items():
        print(f"{'median':<8}{name:<20}{cpu:>14.1f}{wall:>14.1f}")
    (py_cpu, py_wall), (mux_cpu, mux_wall) = medians["redis.asyncio"], medians["RedisMultiplexer"]
    print(
        f"redis.asyncio / RedisMultiplexer: CPU {py_cpu / mux_cpu:.1f}x,"
        f" wall {py_wall / mux_wall:.1f}x"
    )

    await client.delete(*keys)
    await mux.aclose()
    await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    arguments = parser.parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
