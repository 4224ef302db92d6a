"""Rate limits in Redis: one EVALSHA per check, on the server's clock.

One Lua script (``_redis_ratelimit_hit.lua``) checks every limit of a call and
records the hit on all of them or on none, and returns remaining, reset and
retry-after for each, so response headers cost no second round trip. The
script reads ``TIME`` itself: the clocks of the calling hosts never matter.

Keys (built by :class:`~app_kernel._redis.keys.RedisKeys`; ``<tag>`` is the
hashed identifier, so every key of one call shares a Cluster slot)::

    <prefix>ratelimit:{<tag>}:z:<window ms>   sorted set  exact log, member per hit, score = ms
                                              expires one window after the last hit
    <prefix>ratelimit:{<tag>}:c:<window ms>   hash  fixed-window number -> hits (at most 2 fields)
                                              expires two windows after the last hit

Limits of one identifier that share a window and an algorithm share a key: they
count the same hits.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from app_kernel._redis.client import multiplexer_of
from app_kernel._redis.mux import LuaScript
from app_kernel._redis.resp import CommandArg, pack_args
from app_kernel.errors import BackendUnavailable
from app_kernel.reliability.backends.base import Limit, LimitState

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app_kernel._redis.keys import RedisKeys

__all__ = ("RedisRateLimitBackend",)

_AREA = "ratelimit"
# Call plans kept per backend; the cache starts over when full.
_MAX_PLANS = 16_384
# Read once at import, not on the event loop.
_HIT = LuaScript(
    resources.files("app_kernel.reliability.backends")
    .joinpath("_redis_ratelimit_hit.lua")
    .read_text("utf-8")
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One call's EVALSHA, packed but for the log member between head and tail."""

    head: bytes
    record_tail: bytes
    peek_tail: bytes


class RedisRateLimitBackend:
    """:class:`~app_kernel.reliability.backends.base.RateLimitBackend` on Redis.

    Args:
        redis: the kernel's ``redis.asyncio`` client; checks go through its
            pipelined connection (:func:`~app_kernel._redis.client.multiplexer_of`).
        keys: builds every key under the kernel's prefix.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._mux = multiplexer_of(redis)
        self._keys = keys
        # Log members only need to be unique per key: process token + counter.
        self._member_prefix = os.urandom(6).hex()
        self._seq = itertools.count()
        # (key, limits, threshold) -> the packed parts of its EVALSHA.
        self._plans: dict[tuple[str, tuple[Limit, ...], int], _Plan] = {}

    def _key(self, tag: str, limit: Limit, exact_threshold: int) -> str:
        mode = "z" if limit.is_exact(exact_threshold) else "c"
        return self._keys.key(_AREA, tag, mode, str(limit.window_ms))

    def _plan(self, key: str, limits: tuple[Limit, ...], exact_threshold: int) -> _Plan:
        """The packed parts of a call that never change, kept for reuse."""
        plan_key = (key, limits, exact_threshold)
        plan = self._plans.get(plan_key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            redis_keys = [self._key(key, limit, exact_threshold) for limit in limits]
            limit_args: list[CommandArg] = []
            for limit in limits:
                mode = "z" if limit.is_exact(exact_threshold) else "c"
                limit_args += [limit.requests, limit.window_ms, mode]
            # EVALSHA sha numkeys keys... member record limit-args...
            count = 3 + len(redis_keys) + 2 + len(limit_args)
            head = b"*%d\r\n" % count + pack_args(
                ["EVALSHA", _HIT.sha, len(redis_keys), *redis_keys]
            )
            tail = pack_args(limit_args)
            plan = _Plan(head, pack_args([1]) + tail, pack_args([0]) + tail)
            self._plans[plan_key] = plan
        return plan

    async def _call(
        self, key: str, limits: tuple[Limit, ...], exact_threshold: int, *, record: bool
    ) -> tuple[LimitState, ...]:
        plan = self._plan(key, limits, exact_threshold)
        member = pack_args([f"{self._member_prefix}{next(self._seq)}"])
        command = plan.head + member + (plan.record_tail if record else plan.peek_tail)
        try:
            # EVALSHA; after a flushed script cache, loads the script and tries again.
            reply = await self._mux.evalsha_packed(_HIT, command)
        except RedisError as exc:
            msg = f"Redis rate limit: {'hit' if record else 'peek'} failed: {exc}"
            raise BackendUnavailable(msg) from exc
        # Three numbers per limit: remaining, reset ms, retry-after ms. A plain
        # loop, not a generator: this runs on every rate-limited request.
        states = []
        for i, limit in enumerate(limits):
            at = 3 * i
            states.append(
                LimitState(
                    limit=limit,
                    remaining=int(reply[at]),
                    reset_seconds=int(reply[at + 1]) / 1000,
                    retry_after_seconds=int(reply[at + 2]) / 1000,
                )
            )
        return tuple(states)

    async def hit(
        self, key: str, limits: tuple[Limit, ...], exact_threshold: int
    ) -> tuple[LimitState, ...]:
        """Record one hit if every limit has room (one EVALSHA)."""
        return await self._call(key, limits, exact_threshold, record=True)

    async def peek(
        self, key: str, limits: tuple[Limit, ...], exact_threshold: int
    ) -> tuple[LimitState, ...]:
        """The states a hit would see; the script writes nothing (one EVALSHA)."""
        return await self._call(key, limits, exact_threshold, record=False)

    async def reset(self, key: str, windows_ms: frozenset[int]) -> None:
        """Delete ``key``'s logs and counters for every window in ``windows_ms``."""
        redis_keys = [
            self._keys.key(_AREA, key, mode, str(window))
            for window in sorted(windows_ms)
            for mode in ("z", "c")
        ]
        if not redis_keys:
            return
        try:
            await self._mux.execute("DEL", *redis_keys)
        except RedisError as exc:
            msg = f"Redis rate limit: reset failed: {exc}"
            raise BackendUnavailable(msg) from exc

    def key_names(self, key: str, windows_ms: frozenset[int]) -> list[str]:
        """The Redis keys that may hold ``key``'s state (for tests and operators)."""
        return [
            self._keys.key(_AREA, key, mode, str(window))
            for window in sorted(windows_ms)
            for mode in ("z", "c")
        ]
