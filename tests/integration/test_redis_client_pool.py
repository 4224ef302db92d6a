"""The kernel's Redis client queues a burst larger than its pool instead of failing it."""

from __future__ import annotations

import asyncio

from app_kernel._redis.client import create_redis_client
from app_kernel.settings import RedisSettings


async def test_burst_beyond_max_connections_waits_for_a_connection(redis_url: str) -> None:
    client = create_redis_client(RedisSettings(url=redis_url, max_connections=2))
    try:
        # 20 times the pool: a non-blocking pool raises "Too many connections" here.
        # Not more: the loop guard's debug mode records a traceback per task, and
        # 200 of them took one step past its 0.1 s on a slow machine.
        replies = await asyncio.gather(*(client.ping() for _ in range(40)))
        assert replies == [True] * 40
    finally:
        await client.aclose()
