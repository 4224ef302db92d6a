"""Job queue throughput on Redis: enqueue rates and a batched claim+complete drain.

Usage::

    python benchmarks/bench_jobs.py [--redis-url redis://127.0.0.1:6379/0] [--jobs 20000]

Prints jobs per second for:

* enqueue one job per call, awaited one after the other;
* enqueue 1,000 specs per call (one script call each);
* claim (``limit`` 50, weighted) + complete of no-op jobs, draining ``--jobs``
  queued jobs from one process, completions of a batch sent concurrently;
* enqueue-to-claim latency for an idle consumer blocked in ``wait_for_work``
  on another connection (the wake-up list, no polling).

Keys live under a random prefix and are deleted afterwards. No timed asserts:
the numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import replace

import redis.asyncio

from app_kernel._redis.keys import RedisKeys
from app_kernel.jobs.backends.base import JobSpec, Priority
from app_kernel.jobs.backends.redis import RedisJobQueue

PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
WEIGHTS: dict[Priority, int] = {"high": 6, "normal": 3, "low": 1}


def spec(index: int) -> JobSpec:
    return JobSpec(
        job_id=uuid.uuid4().hex,
        task_name="noop",
        payload_json=f'{{"n": {index}}}',
        priority=PRIORITIES[index % 3],
    )


async def enqueue_one_at_a_time(queue: RedisJobQueue, count: int) -> float:
    start = time.perf_counter()
    for index in range(count):
        await queue.enqueue([spec(index)])
    return count / (time.perf_counter() - start)


async def enqueue_batched(queue: RedisJobQueue, count: int, batch: int) -> float:
    start = time.perf_counter()
    for first in range(0, count, batch):
        await queue.enqueue([spec(i) for i in range(first, min(count, first + batch))])
    return count / (time.perf_counter() - start)


async def drain(queue: RedisJobQueue, limit: int) -> tuple[int, float]:
    """Claim ``limit`` at a time and complete each batch concurrently until empty."""
    done = 0
    start = time.perf_counter()
    while True:
        jobs = await queue.claim("bench", limit, lease_seconds=60, weights=WEIGHTS)
        if not jobs:
            break
        results = await asyncio.gather(
            *(queue.complete(j.job_id, j.token, "null", result_ttl_seconds=60) for j in jobs)
        )
        assert all(results)
        done += len(jobs)
    return done, done / (time.perf_counter() - start)


async def pickup_latency(
    producer: RedisJobQueue, consumer: RedisJobQueue, count: int
) -> list[float]:
    """Seconds from enqueue to claim for an idle consumer blocked in ``wait_for_work``."""
    latencies: list[float] = []

    async def consume() -> None:
        while len(latencies) < count:
            jobs = await consumer.claim("latency", 10, lease_seconds=60)
            now = time.perf_counter()
            for job in jobs:
                latencies.append(now - float(job.payload_json))
                await consumer.complete(job.job_id, job.token, "null", result_ttl_seconds=60)
            if not jobs:
                await consumer.wait_for_work(1.0)

    task = asyncio.create_task(consume())
    for _ in range(count):
        await asyncio.sleep(0.005)  # let the consumer block again
        job = JobSpec(job_id=uuid.uuid4().hex, task_name="noop", payload_json="0")
        await producer.enqueue([replace(job, payload_json=repr(time.perf_counter()))])
    await task
    return sorted(latencies)


async def delete_prefix(client: redis.asyncio.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


async def main(url: str, jobs: int) -> None:
    client = redis.asyncio.Redis.from_url(url, max_connections=100)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    queue = RedisJobQueue(client, RedisKeys(prefix), namespace="bench")
    try:
        await queue.status()  # connect
        single = await enqueue_one_at_a_time(queue, 2_000)
        print(f"enqueue, 1 spec per call:      {single:>10,.0f} jobs/s")
        await delete_prefix(client, prefix)

        batched = await enqueue_batched(queue, jobs, 1_000)
        print(f"enqueue, 1,000 specs per call: {batched:>10,.0f} jobs/s")

        drained, rate = await drain(queue, 50)
        print(f"claim(50) + complete, {drained:,} no-op jobs: {rate:>10,.0f} jobs/s")
        status = await queue.status()
        assert drained == jobs, (drained, status)

        other = redis.asyncio.Redis.from_url(url)
        try:
            consumer = RedisJobQueue(other, RedisKeys(prefix), namespace="latency")
            producer = RedisJobQueue(client, RedisKeys(prefix), namespace="latency")
            lat = await pickup_latency(producer, consumer, 500)
        finally:
            await other.aclose()
        p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
        print(f"enqueue -> claim by an idle consumer: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.redis_url, args.jobs))
