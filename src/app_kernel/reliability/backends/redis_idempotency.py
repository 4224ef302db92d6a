"""Idempotency records in Redis: one Lua call (one round trip) per operation.

Each record is one hash, ``<prefix>idem:{<storage key>}:rec``, whose hash tag
is the service's digest of the caller's scope and Idempotency-Key, so keys are
bounded in length whatever the client sent. Pending claims expire after the
lock TTL (counted by the server), stored responses after the record TTL.
Calls go through the client's pipelined connection, which reloads a script and
tries again after ``NOSCRIPT``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app_kernel._redis.client import multiplexer_of
from app_kernel._redis.lua import backend_errors, read_lua, to_ms
from app_kernel._redis.mux import LuaScript
from app_kernel.reliability.backends.idempotency_base import Claim, ClaimState

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app_kernel._redis.keys import RedisKeys

__all__ = ("RedisIdempotency",)

_AREA = "idem"


# Read once at import, not on the event loop.
_CLAIM = LuaScript(read_lua("app_kernel.reliability.backends", "_redis_idem_claim.lua"))
_COMPLETE = LuaScript(read_lua("app_kernel.reliability.backends", "_redis_idem_complete.lua"))
_RELEASE = LuaScript(read_lua("app_kernel.reliability.backends", "_redis_idem_release.lua"))
_HEARTBEAT = LuaScript(read_lua("app_kernel.reliability.backends", "_redis_idem_heartbeat.lua"))


class RedisIdempotency:
    """:class:`~app_kernel.reliability.backends.idempotency_base.IdempotencyBackend` on Redis.

    Args:
        redis: the kernel's ``redis.asyncio`` client (calls use its pipelined connection).
        keys: builds every key under the kernel's prefix.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._mux = multiplexer_of(redis)
        self._keys = keys

    def _key(self, key: str) -> str:
        return self._keys.key(_AREA, key, "rec")

    async def _call(self, script: LuaScript, key: str, *args: bytes | str | int) -> Any:
        return await self._mux.evalsha(script, [self._key(key)], args)

    async def claim(self, key: str, fingerprint: str, token: str, lock_ttl_seconds: float) -> Claim:
        """Take the claim, or report the live record (see the base protocol)."""
        with backend_errors("Redis idempotency store", "claim"):
            reply = await self._call(_CLAIM, key, fingerprint, token, to_ms(lock_ttl_seconds))
        code = int(reply[0])
        if code == 0:
            return Claim(ClaimState.ACQUIRED)
        if code == 1:
            return Claim(ClaimState.IN_PROGRESS, retry_after_seconds=max(0, int(reply[1])) / 1000)
        if code == 2:
            return Claim(ClaimState.MISMATCH)
        record = reply[1]
        return Claim(
            ClaimState.COMPLETED,
            record=record if isinstance(record, bytes) else str(record).encode(),
        )

    async def complete(self, key: str, token: str, record: bytes, ttl_seconds: float) -> bool:
        """Store ``record`` if ``token`` still holds the claim."""
        with backend_errors("Redis idempotency store", "complete"):
            done = await self._call(_COMPLETE, key, token, record, to_ms(ttl_seconds))
        return int(done) == 1

    async def release(self, key: str, token: str) -> bool:
        """Delete the pending claim if ``token`` holds it."""
        with backend_errors("Redis idempotency store", "release"):
            done = await self._call(_RELEASE, key, token)
        return int(done) == 1

    async def heartbeat(self, key: str, token: str, lock_ttl_seconds: float) -> bool:
        """Extend the claim if ``token`` holds it."""
        with backend_errors("Redis idempotency store", "heartbeat"):
            done = await self._call(_HEARTBEAT, key, token, to_ms(lock_ttl_seconds))
        return int(done) == 1
