"""The kernel's one Redis connection pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app_kernel.errors import MissingDependencyError
from app_kernel.settings import RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ("create_redis_client",)


def create_redis_client(settings: RedisSettings) -> Redis:
    """A ``redis.asyncio`` client over a shared pool; connects lazily."""
    try:
        from redis.asyncio import Redis
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis", "REDIS_URL") from exc  # noqa: EM101
    assert settings.url is not None
    return Redis.from_url(
        settings.url,
        max_connections=settings.max_connections,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.socket_timeout_seconds,
        health_check_interval=30,
    )
