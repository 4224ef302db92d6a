"""A time limit for a backend call that a busy event loop does not trip.

``asyncio.timeout(0.05)`` around a Redis call measures the event loop as much
as Redis: when the loop is saturated (a burst of requests, each a millisecond
of CPU), the reply sits unread in the socket while other callbacks run, and the
timer fires before the loop gets round to reading it. A rate limiter that
fails open on that timeout stops limiting exactly when the service is busiest.

:class:`backend_deadline` does not give up the moment its timer fires: it
first lets the loop poll its sockets once more and run what that poll woke,
and only then expires the block if it is still waiting. A reply that was
already there is read and its caller resumes first; a backend that is really
slow or gone still times out, one loop turn after ``seconds``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ("backend_deadline",)


class backend_deadline:  # lower case: used as asyncio.timeout is
    """``async with backend_deadline(0.05):`` raises ``TimeoutError`` when the block overruns.

    It cancels the task the way ``asyncio.timeout`` does (and turns that
    cancellation, and only that one, into ``TimeoutError``), with one timer
    handle per block: it runs around every Redis call of a request.

    Args:
        seconds: the limit; the block is cancelled one loop turn after it.
    """

    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_seconds", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._expired = False

    async def __aenter__(self) -> backend_deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            msg = "backend_deadline must be used inside a task"
            raise RuntimeError(msg)
        self._loop = loop
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = loop.call_at(loop.time() + self._seconds, self._after_limit)
        return self

    # The limit passed. The steps below hop once through the ready queue, then
    # once through the timers, then once more through the ready queue: on
    # asyncio's loop and on uvloop alike, that puts an I/O poll, and the
    # callbacks it scheduled (the wake-up of a caller whose reply was waiting
    # in the socket), before the decision.

    def _after_limit(self) -> None:
        self._handle = self._loop.call_soon(self._before_poll)

    def _before_poll(self) -> None:
        self._handle = self._loop.call_at(self._loop.time(), self._after_poll)

    def _after_poll(self) -> None:
        self._handle = self._loop.call_soon(self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # As asyncio.timeout: only a cancellation this block asked for, and
        # not also asked for by someone else, becomes TimeoutError.
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def expired(self) -> bool:
        """True once the limit passed (the block was cancelled or is about to be)."""
        return self._expired
