"""A time limit for a backend call that a busy event loop does not trip.

``asyncio.timeout(0.05)`` around a Redis call measures the event loop as much
as Redis: when the loop is saturated (a burst of requests, each a millisecond
of CPU), the reply sits unread in the socket while other callbacks run, and the
timer fires before the loop gets round to reading it. A rate limiter that
fails open on that timeout stops limiting exactly when the service is busiest.

:class:`backend_deadline` fires like ``asyncio.timeout`` unless its timer ran
late: a timer more than half the limit late means the loop was behind, so the
deadline moves on by one more limit (the loop polls its sockets before the new
deadline can pass), up to ``max_seconds`` in all. A backend that is really
slow or gone still times out, after ``seconds`` on an idle loop.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ("backend_deadline",)

_MIN_MAX_SECONDS = 1.0
_MAX_FACTOR = 20


class backend_deadline:
    """``async with backend_deadline(0.05):`` raises ``TimeoutError`` when the block overruns.

    Args:
        seconds: the limit on an event loop that keeps up.
        max_seconds: the limit however far behind the loop is; by default 20
            times ``seconds``, at least one second.
    """

    __slots__ = ("_due", "_handle", "_loop", "_max", "_seconds", "_start", "_timeout")

    def __init__(self, seconds: float, *, max_seconds: float | None = None) -> None:
        self._seconds = seconds
        self._max = (
            max_seconds if max_seconds is not None else max(_MIN_MAX_SECONDS, _MAX_FACTOR * seconds)
        )
        self._timeout = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> backend_deadline:
        await self._timeout.__aenter__()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._start = loop.time()
        self._due = self._start + self._seconds
        self._handle = loop.call_at(self._due, self._check)
        return self

    def _check(self) -> None:
        now = self._loop.time()
        if now - self._due > self._seconds / 2 and now - self._start < self._max:
            self._due = min(now + self._seconds, self._start + self._max)
            self._handle = self._loop.call_at(self._due, self._check)
            return
        self._handle = None
        self._timeout.reschedule(now)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await self._timeout.__aexit__(exc_type, exc, tb)

    def expired(self) -> bool:
        """True once the limit passed (the block was cancelled or is about to be)."""
        return self._timeout.expired()
