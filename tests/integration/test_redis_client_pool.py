"""The kernel's Redis client queues a burst larger than its pool instead of failing it."""

from __future__ import annotations

import asyncio

from app_kernel._redis.client import create_redis_client
from app_kernel.settings import RedisSettings


async def test_burst_beyond_max_connections_waits_for_a_connection(redis_url: str) -> None:
    client = create_redis_client(RedisSettings(url=redis_url, max_connections=4))
    try:
        # 50 times the pool: a non-blocking pool raises "Too many connections" here.
        replies = await asyncio.gather(*(client.ping() for _ in range(200)))
        assert replies == [True] * 200
    finally:
        await client.aclose()
