"""Idempotency records in Redis: one Lua call (one round trip) per operation.

Each record is one hash, ``<prefix>idem:{<storage key>}:rec``, whose hash tag
is the service's digest of the caller's scope and Idempotency-Key, so keys are
bounded in length whatever the client sent. Pending claims expire after the
lock TTL (counted by the server), stored responses after the record TTL.
``AsyncScript`` reloads a script and retries once after ``NOSCRIPT``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app_kernel._redis.lua import backend_errors, read_lua, to_ms
from app_kernel.reliability.backends.idempotency_base import Claim, ClaimState

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from app_kernel._redis.keys import RedisKeys

__all__ = ("RedisIdempotency",)

_AREA = "idem"


# Read once at import, not on the event loop.
_CLAIM = read_lua("app_kernel.reliability.backends", "_redis_idem_claim.lua")
_COMPLETE = read_lua("app_kernel.reliability.backends", "_redis_idem_complete.lua")
_RELEASE = read_lua("app_kernel.reliability.backends", "_redis_idem_release.lua")
_HEARTBEAT = read_lua("app_kernel.reliability.backends", "_redis_idem_heartbeat.lua")


class RedisIdempotency:
    """:class:`~app_kernel.reliability.backends.idempotency_base.IdempotencyBackend` on Redis.

    Args:
        redis: the kernel's ``redis.asyncio`` client.
        keys: builds every key under the kernel's prefix.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._keys = keys
        self._claim = redis.register_script(_CLAIM)
        self._complete = redis.register_script(_COMPLETE)
        self._release = redis.register_script(_RELEASE)
        self._heartbeat = redis.register_script(_HEARTBEAT)

    def _key(self, key: str) -> str:
        return self._keys.key(_AREA, key, "rec")

    async def _call(self, script: AsyncScript, key: str, *args: bytes | str | int) -> Any:
        return await script(keys=[self._key(key)], args=args)

    async def claim(self, key: str, fingerprint: str, token: str, lock_ttl_seconds: float) -> Claim:
        """Take the claim, or report the live record (see the base protocol)."""
        with backend_errors("Redis idempotency store", "claim"):
            reply = await self._call(self._claim, key, fingerprint, token, to_ms(lock_ttl_seconds))
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
            done = await self._call(self._complete, key, token, record, to_ms(ttl_seconds))
        return int(done) == 1

    async def release(self, key: str, token: str) -> bool:
        """Delete the pending claim if ``token`` holds it."""
        with backend_errors("Redis idempotency store", "release"):
            done = await self._call(self._release, key, token)
        return int(done) == 1

    async def heartbeat(self, key: str, token: str, lock_ttl_seconds: float) -> bool:
        """Extend the claim if ``token`` holds it."""
        with backend_errors("Redis idempotency store", "heartbeat"):
            done = await self._call(self._heartbeat, key, token, to_ms(lock_ttl_seconds))
        return int(done) == 1
