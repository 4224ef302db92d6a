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

from typing import TYPE_CHECKING, Any

from app_kernel._redis.client import multiplexer_of
from app_kernel._redis.lua import backend_errors, encode, read_lua, to_ms
from app_kernel._redis.mux import LuaScript
from app_kernel.streaming.backends.base import LeaseGrant, LeaseStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app_kernel._redis.keys import RedisKeys

__all__ = ("RedisLeaseBackend",)

_AREA = "lease"


# Read once at import, not on the event loop.
_ACQUIRE = LuaScript(read_lua("app_kernel.streaming.backends", "_redis_acquire.lua"))
_REFRESH = LuaScript(read_lua("app_kernel.streaming.backends", "_redis_refresh.lua"))
_STATUS = LuaScript(read_lua("app_kernel.streaming.backends", "_redis_status.lua"))


class RedisLeaseBackend:
    """:class:`~app_kernel.streaming.backends.base.LeaseBackend` on Redis.

    Args:
        redis: the kernel's ``redis.asyncio`` client; operations go through its
            pipelined connection (:func:`~app_kernel._redis.client.multiplexer_of`).
        keys: builds every key under the kernel's prefix.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._mux = multiplexer_of(redis)
        self._keys = keys

    def key(self, user_id: str) -> str:
        """The sorted set holding ``user_id``'s leases."""
        return self._keys.key(_AREA, user_id, "streams")

    async def _call(self, script: LuaScript, user_id: str, *args: bytes | int) -> Any:
        # EVALSHA, and on NOSCRIPT the script is loaded and the call retried once.
        return await self._mux.evalsha(script, [self.key(user_id)], args)

    async def acquire(
        self, user_id: str, lease_id: str, limit: int, ttl_seconds: float
    ) -> LeaseGrant:
        """Grant ``lease_id`` if the user holds fewer than ``limit`` live leases."""
        with backend_errors("Redis stream leases", "acquire"):
            granted, wait_ms = await self._call(
                _ACQUIRE, user_id, encode(lease_id), limit, to_ms(ttl_seconds)
            )
        return LeaseGrant(int(granted) == 1, max(0, int(wait_ms)) / 1000)

    async def release(self, user_id: str, lease_id: str) -> None:
        """Drop the lease; an unknown or expired lease is a no-op."""
        with backend_errors("Redis stream leases", "release"):
            await self._mux.execute("ZREM", self.key(user_id), encode(lease_id))

    async def refresh(self, user_id: str, lease_id: str, ttl_seconds: float) -> bool:
        """Move a live lease's deadline; False if it expired or is unknown."""
        with backend_errors("Redis stream leases", "refresh"):
            refreshed = await self._call(_REFRESH, user_id, encode(lease_id), to_ms(ttl_seconds))
        return int(refreshed) == 1

    async def status(self, user_id: str) -> LeaseStatus:
        """Count the user's live leases and the time until the oldest expires."""
        with backend_errors("Redis stream leases", "status"):
            active, wait_ms = await self._call(_STATUS, user_id)
        return LeaseStatus(int(active), max(0, int(wait_ms)) / 1000)
