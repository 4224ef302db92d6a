"""Leases in Redis: one sorted set per user, one round trip per operation.

Key (``<prefix>`` from :class:`~app_kernel._redis.keys.RedisKeys`)::

    <prefix>lease:{<user id>}:streams   zset  member = lease id, score = deadline (ms)

Deadlines are read from the server's ``TIME`` inside each script, so the
hosts' clocks never matter. Acquire and refresh prune expired members and move
the key's expiry to its last deadline, so an idle user's key disappears by
itself. The user id is the key's hash tag (hashed when long or unusual), so the
key is bounded and Cluster-safe. Scripts are reloaded after ``NOSCRIPT``
(a restart or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from app_kernel.errors import BackendUnavailable
from app_kernel.streaming.backends.base import LeaseGrant, LeaseStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from app_kernel._redis.keys import RedisKeys

__all__ = ("RedisLeaseBackend",)

_AREA = "lease"


def _lua(name: str) -> str:
    path = resources.files("app_kernel.streaming.backends").joinpath(f"_redis_{name}.lua")
    return path.read_text("utf-8")


# Read once at import, not on the event loop.
_ACQUIRE = _lua("acquire")
_REFRESH = _lua("refresh")
_STATUS = _lua("status")


def _arg(value: str) -> bytes:
    """``value`` as bytes; lone surrogates (undecodable input) survive the round trip."""
    return value.encode("utf-8", "surrogatepass")


def _ms(seconds: float) -> int:
    """A positive duration in whole milliseconds, rounded up (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


@contextlib.contextmanager
def _wrap_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        msg = f"Redis stream leases: {operation} failed: {exc}"
        raise BackendUnavailable(msg) from exc


class RedisLeaseBackend:
    """:class:`~app_kernel.streaming.backends.base.LeaseBackend` on Redis.

    Args:
        redis: the kernel's ``redis.asyncio`` client.
        keys: builds every key under the kernel's prefix.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._acquire = redis.register_script(_ACQUIRE)
        self._refresh = redis.register_script(_REFRESH)
        self._status = redis.register_script(_STATUS)

    def key(self, user_id: str) -> str:
        """The sorted set holding ``user_id``'s leases."""
        return self._keys.key(_AREA, user_id, "streams")

    async def _call(self, script: AsyncScript, user_id: str, *args: bytes | int) -> Any:
        # AsyncScript sends EVALSHA, and on NOSCRIPT loads the script and retries once.
        return await script(keys=[self.key(user_id)], args=args)

    async def acquire(
        self, user_id: str, lease_id: str, limit: int, ttl_seconds: float
    ) -> LeaseGrant:
        """Grant ``lease_id`` if the user holds fewer than ``limit`` live leases."""
        with _wrap_errors("acquire"):
            granted, wait_ms = await self._call(
                self._acquire, user_id, _arg(lease_id), limit, _ms(ttl_seconds)
            )
        return LeaseGrant(int(granted) == 1, max(0, int(wait_ms)) / 1000)

    async def release(self, user_id: str, lease_id: str) -> None:
        """Drop the lease; an unknown or expired lease is a no-op."""
        with _wrap_errors("release"):
            await self._redis.zrem(self.key(user_id), _arg(lease_id))

    async def refresh(self, user_id: str, lease_id: str, ttl_seconds: float) -> bool:
        """Move a live lease's deadline; False if it expired or is unknown."""
        with _wrap_errors("refresh"):
            refreshed = await self._call(self._refresh, user_id, _arg(lease_id), _ms(ttl_seconds))
        return int(refreshed) == 1

    async def status(self, user_id: str) -> LeaseStatus:
        """Count the user's live leases and the time until the oldest expires."""
        with _wrap_errors("status"):
            active, wait_ms = await self._call(self._status, user_id)
        return LeaseStatus(int(active), max(0, int(wait_ms)) / 1000)
