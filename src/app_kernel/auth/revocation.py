"""Per-process cache of revocation state, at most ``revocation_cache_seconds`` old."""

from __future__ import annotations

import asyncio
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

    Loads are shared: when an entry expires under concurrent requests, the
    first caller asks the backend and the others wait for its answer instead of
    each sending the same query.
    """

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, load: Callable[[K], Awaitable[V]]) -> V:
        """The cached value of ``key``, or ``await load(key)`` when absent or stale."""
        if self.ttl_seconds <= 0:
            return await load(key)
        while True:
            now = time.monotonic()
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return entry[1]
            loading = self._loading.get(key)
            if loading is None:
                return await self._load(key, load, now)
            try:
                # Shielded: a waiter that is cancelled must not cancel the shared load.
                return await asyncio.shield(loading)
            except asyncio.CancelledError:
                if not loading.cancelled():
                    raise  # this caller was cancelled
                # The loading caller was cancelled; try again (a new load, or a fresh entry).

    async def _load(self, key: K, load: Callable[[K], Awaitable[V]], now: float) -> V:
        shared: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = shared
        try:
            value = await load(key)
        except BaseException as exc:
            if self._loading.get(key) is shared:
                del self._loading[key]
            if isinstance(exc, Exception):
                shared.set_exception(exc)
                shared.exception()  # the waiters re-raise it; nobody else needs to see it
            else:
                shared.cancel()
            raise
        if self._loading.get(key) is shared:
            # Only a load that was not overtaken by forget() may fill the cache.
            del self._loading[key]
            self._entries[key] = (now + self.ttl_seconds, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        shared.set_result(value)
        return value

    def forget(self, key: K) -> None:
        """Drop ``key`` so the next read asks the backend (after a local change)."""
        self._entries.pop(key, None)
        self._loading.pop(key, None)
