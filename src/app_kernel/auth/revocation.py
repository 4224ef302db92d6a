"""Per-process cache of revocation state, at most ``revocation_cache_seconds`` old."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ("TtlCache",)

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A small LRU whose entries live ``ttl_seconds`` at most.

    Used so that the backend is asked about a user's revocation state at most
    once per second per process, which keeps revocation prompt while sparing
    the backend a round trip on every request.
    """

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    async def get(self, key: K, load: Callable[[K], Awaitable[V]]) -> V:
        """The cached value of ``key``, or ``await load(key)`` when absent or stale."""
        if self.ttl_seconds <= 0:
            return await load(key)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = await load(key)
        self._entries[key] = (now + self.ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def forget(self, key: K) -> None:
        """Drop ``key`` so the next read asks the backend (after a local change)."""
        self._entries.pop(key, None)
