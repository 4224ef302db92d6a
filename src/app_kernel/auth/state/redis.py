"""Auth state in Redis: one round trip per operation, on the server's clock.

Every read-modify-write is a Lua script (the ``_redis_*.lua`` files beside this
module), so it is atomic without WATCH/MULTI retries. Scripts touch one key
each, built by :class:`~app_kernel._redis.keys.RedisKeys` with the family id,
user id or counter key as the hash tag, so they run unchanged on Redis
Cluster. Operations on several counters (which live in different slots) are a
pipeline of single-key calls: still one round trip.

Time never comes from this process: expiries are TTLs counted by the server,
family ends are absolute times the caller took from :meth:`RedisAuthState.now`
(the server's ``TIME``).

Keys (``<prefix>`` from :class:`RedisKeys`)::

    <prefix>auth:{<family id>}:fam     hash  user, jti, revoked   expires at the family's end
    <prefix>auth:{<user id>}:user      hash  valid_after, disabled
    <prefix>auth:{<counter key>}:fail  string  failure count      expires at the window's end
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from app_kernel._redis.client import multiplexer_of
from app_kernel._redis.lua import (
    NOSCRIPT_ATTEMPTS,
    backend_errors,
    encode,
    read_lua,
    run_script,
    text,
    to_ms,
)
from app_kernel.auth.state.base import FailureCount, RotateOutcome, UserRevocation

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from app_kernel._redis.keys import RedisKeys

__all__ = ("RedisAuthState",)

_AREA = "auth"
_ROTATE_OUTCOMES = (RotateOutcome.ROTATED, RotateOutcome.REUSED, RotateOutcome.REVOKED)


# Read once at import, not on the event loop.
_START_FAMILY = read_lua("app_kernel.auth.state", "_redis_start_family.lua")
_ROTATE = read_lua("app_kernel.auth.state", "_redis_rotate.lua")
_REVOKE_FAMILY = read_lua("app_kernel.auth.state", "_redis_revoke_family.lua")
_SET_VALID_AFTER = read_lua("app_kernel.auth.state", "_redis_set_valid_after.lua")
_SET_DISABLED = read_lua("app_kernel.auth.state", "_redis_set_disabled.lua")
_ADD_FAILURE = read_lua("app_kernel.auth.state", "_redis_add_failure.lua")


class RedisAuthState:
    """:class:`~app_kernel.auth.state.base.AuthStateBackend` on Redis.

    Args:
        redis: the kernel's ``redis.asyncio`` client.
        keys: builds every key under the kernel's prefix.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        # The two reads made on authenticated requests (when the revocation
        # cache misses) use the pipelined connection; the rest use the pool.
        self._mux = multiplexer_of(redis)
        self._keys = keys
        self._start_family = redis.register_script(_START_FAMILY)
        self._rotate = redis.register_script(_ROTATE)
        self._revoke_family = redis.register_script(_REVOKE_FAMILY)
        self._set_valid_after = redis.register_script(_SET_VALID_AFTER)
        self._set_disabled = redis.register_script(_SET_DISABLED)
        self._add_failure = redis.register_script(_ADD_FAILURE)

    def _family_key(self, family_id: str) -> str:
        return self._keys.key(_AREA, family_id, "fam")

    def _user_key(self, user_id: str) -> str:
        return self._keys.key(_AREA, user_id, "user")

    def _failure_key(self, key: str) -> str:
        return self._keys.key(_AREA, key, "fail")

    async def _call(self, script: AsyncScript, key: str, *args: bytes | int) -> Any:
        return await run_script(script, [key], args)

    async def start_family(
        self, family_id: str, user_id: str, jti: str, family_expires_at: float
    ) -> None:
        """Record a new token family (a login) whose current refresh token is ``jti``."""
        with backend_errors("Redis auth state", "start_family"):
            await self._call(
                self._start_family,
                self._family_key(family_id),
                encode(user_id),
                encode(jti),
                math.floor(family_expires_at * 1000),
            )

    async def rotate(self, family_id: str, old_jti: str, new_jti: str) -> RotateOutcome:
        """Atomically replace the family's current token ``old_jti`` by ``new_jti``.

        Repeating a call that already rotated (same ``old_jti`` and ``new_jti``,
        as a client retry after a lost reply does) gives ``ROTATED`` again.
        """
        with backend_errors("Redis auth state", "rotate"):
            code = await self._call(
                self._rotate, self._family_key(family_id), encode(old_jti), encode(new_jti)
            )
        return _ROTATE_OUTCOMES[int(code)]

    async def revoke_family(self, family_id: str) -> bool:
        """Revoke a family (logout); returns False if it was unknown or already revoked."""
        with backend_errors("Redis auth state", "revoke_family"):
            revoked = await self._call(self._revoke_family, self._family_key(family_id))
        return int(revoked) == 1

    async def family_user(self, family_id: str) -> str | None:
        """The user id of a live (not revoked, not expired) family, else None."""
        with backend_errors("Redis auth state", "family_user"):
            reply = await self._mux.execute("HMGET", self._family_key(family_id), "user", "revoked")
        user, revoked = reply
        if user is None or revoked is None or text(revoked) == "1":
            return None
        return text(user)

    async def set_valid_after(self, user_id: str, valid_after: float, ttl_seconds: float) -> None:
        """Refuse the user's tokens issued before ``valid_after``; forget after ``ttl_seconds``.

        A smaller ``valid_after`` than the recorded one changes nothing, and a
        shorter TTL never shortens the record's.
        """
        with backend_errors("Redis auth state", "set_valid_after"):
            await self._call(
                self._set_valid_after,
                self._user_key(user_id),
                repr(float(valid_after)).encode(),
                to_ms(ttl_seconds),
            )

    async def set_disabled(self, user_id: str, disabled: bool, ttl_seconds: float) -> None:
        """Mark the user deactivated (or active again).

        A shorter TTL never shortens the record's (it also holds ``valid_after``).
        """
        with backend_errors("Redis auth state", "set_disabled"):
            await self._call(
                self._set_disabled,
                self._user_key(user_id),
                b"1" if disabled else b"0",
                to_ms(ttl_seconds),
            )

    async def user_state(self, user_id: str) -> UserRevocation:
        """The user's revocation state; the default when nothing is recorded."""
        with backend_errors("Redis auth state", "user_state"):
            reply = await self._mux.execute(
                "HMGET", self._user_key(user_id), "valid_after", "disabled"
            )
        valid_after, disabled = reply
        return UserRevocation(
            valid_after=None if valid_after is None else float(text(valid_after)),
            disabled=disabled is not None and text(disabled) == "1",
        )

    async def failures(self, keys: Sequence[str]) -> list[FailureCount]:
        """Read failed-login counters, one per key, in order (one pipelined round trip)."""
        if not keys:
            return []
        with backend_errors("Redis auth state", "failures"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    redis_key = self._failure_key(key)
                    pipe.get(redis_key)
                    pipe.pttl(redis_key)
                replies = await pipe.execute()
        counts: list[FailureCount] = []
        for value, ttl_ms in zip(replies[::2], replies[1::2], strict=True):
            # The counter can expire between GET and PTTL: a window that ended is empty.
            if value is None or int(ttl_ms) < 0:
                counts.append(FailureCount(0, 0.0))
            else:
                counts.append(FailureCount(int(value), int(ttl_ms) / 1000))
        return counts

    async def add_failure(self, keys: Sequence[str], window_seconds: float) -> list[FailureCount]:
        """Count one failure on every key (a window starts at a key's first failure).

        A key given twice counts once. The keys hash to different slots, so each
        is its own script call; they go out together in one pipeline.
        """
        if not keys:
            return []
        unique = list(dict.fromkeys(keys))
        window_ms = to_ms(window_seconds)
        with backend_errors("Redis auth state", "add_failure"):
            replies = await self._pipelined_script(
                self._add_failure, [self._failure_key(key) for key in unique], window_ms
            )
        by_key = {
            key: FailureCount(int(count), int(left_ms) / 1000)
            for key, (count, left_ms) in zip(unique, replies, strict=True)
        }
        return [by_key[key] for key in keys]

    async def _pipelined_script(
        self, script: AsyncScript, redis_keys: list[str], *args: bytes | int
    ) -> list[Any]:
        """Run ``script`` once per key in one pipeline; reload it on NOSCRIPT.

        A pipeline given :class:`AsyncScript` objects asks ``SCRIPT EXISTS`` first,
        an extra round trip on every call; plain EVALSHA with a reload after a
        NOSCRIPT reply costs that only when the script cache was flushed.
        """
        pending = list(range(len(redis_keys)))
        results: list[Any] = [None] * len(redis_keys)
        for attempt in range(1, NOSCRIPT_ATTEMPTS + 1):
            async with self._redis.pipeline(transaction=False) as pipe:
                for index in pending:
                    pipe.evalsha(script.sha, 1, redis_keys[index], *args)
                replies = await pipe.execute(raise_on_error=False)
            missing: list[int] = []
            for index, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt < NOSCRIPT_ATTEMPTS:
                    missing.append(index)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[index] = reply
            if not missing:
                break
            # NOSCRIPT means the script did not run, so only those calls are repeated.
            script.sha = await self._redis.script_load(script.script)
            pending = missing
        return results

    async def clear_failures(self, key: str) -> None:
        """Forget a counter (a successful login clears its username's)."""
        with backend_errors("Redis auth state", "clear_failures"):
            await self._redis.delete(self._failure_key(key))

    async def now(self) -> float:
        """The Redis server's clock (``TIME``), in seconds since the epoch."""
        with backend_errors("Redis auth state", "now"):
            reply = await self._redis.time()
        seconds, microseconds = reply
        return int(seconds) + int(microseconds) / 1_000_000
