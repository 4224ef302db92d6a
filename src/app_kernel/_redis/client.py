"""The kernel's Redis connections: a ``redis.asyncio`` pool, and one pipelined connection.

The pool serves everything that blocks a connection or needs transactions
(the job queue's waits, pipelines). The short Lua calls made on nearly every
request (rate limits, stream leases, idempotency) go through the client's
:class:`~app_kernel._redis.mux.RedisMultiplexer` instead, which costs a
fraction of a pool round trip (see ``benchmarks/bench_redis_mux.py``).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from app_kernel.errors import MissingDependencyError
from app_kernel.settings import RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app_kernel._redis.mux import RedisMultiplexer

__all__ = ("close_redis", "create_redis_client", "multiplexer_of")

_DEFAULT_TIMEOUT = 5.0
_multiplexers: weakref.WeakKeyDictionary[Redis, RedisMultiplexer] = weakref.WeakKeyDictionary()


def create_redis_client(settings: RedisSettings) -> Redis:
    """A ``redis.asyncio`` client over a shared pool; connects lazily.

    The pool is a blocking one: with ``max_connections`` in use, a caller waits
    (up to the socket timeout) for a connection to come back instead of failing
    at once, so a burst of requests queues rather than answering errors.
    """
    try:
        from redis.asyncio import BlockingConnectionPool, Redis
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis", "REDIS_URL") from exc  # noqa: EM101
    assert settings.url is not None
    pool = BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_seconds,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.socket_timeout_seconds,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


def multiplexer_of(client: Redis) -> RedisMultiplexer:
    """The pipelined connection to ``client``'s server (one per client, made on first use).

    It reuses the client's URL, credentials, database and socket timeout.
    """
    mux = _multiplexers.get(client)
    if mux is None:
        from app_kernel._redis.mux import RedisMultiplexer

        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        mux = RedisMultiplexer.for_client(client, socket_timeout=timeout or _DEFAULT_TIMEOUT)
        _multiplexers[client] = mux
    return mux


async def close_redis(client: Redis) -> None:
    """Close ``client``'s pipelined connection, then the client and its pool."""
    mux = _multiplexers.pop(client, None)
    try:
        if mux is not None:
            await mux.aclose()
    finally:
        await client.aclose()
