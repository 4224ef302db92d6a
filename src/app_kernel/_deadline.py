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

The blocks of one event loop share one timer (a timer per block cost more
than the rest of the block on uvloop). It wakes at the earliest deadline but
at most once per :data:`TICK_SECONDS`, so a block may expire up to that much
later than ``seconds``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from types import TracebackType

__all__ = ("TICK_SECONDS", "backend_deadline")

TICK_SECONDS = 0.005
"""The shared timer wakes at most once per this many seconds."""


class _Watch:
    """The pending deadlines of one event loop and the one timer checking them.

    Blocks that ended stay in the heap, marked, until they reach its head: a
    block costs a heap push and no timer of its own.
    """

    __slots__ = ("_handle", "_heap", "_last_wake", "_loop", "_next_wake", "_seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the watch is the value of a WeakKeyDictionary keyed by the loop.
        self._loop = weakref.ref(loop)
        self._heap: list[tuple[float, int, backend_deadline]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._next_wake = 0.0
        self._last_wake = 0.0

    def add(self, block: backend_deadline, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), block))
        if self._handle is None or when < self._next_wake:
            self._arm(when)

    def _arm(self, when: float) -> None:
        when = max(when, self._last_wake + TICK_SECONDS)
        if self._handle is not None:
            if when >= self._next_wake:
                return
            self._handle.cancel()
        self._next_wake = when
        loop = self._loop()
        if loop is not None:
            self._handle = loop.call_at(when, self._wake)

    def _wake(self) -> None:
        self._handle = None
        loop = self._loop()
        if loop is None:
            return
        now = self._last_wake = loop.time()
        heap = self._heap
        while heap and (heap[0][2]._done or heap[0][0] <= now):
            block = heapq.heappop(heap)[2]
            if not block._done:
                block._after_limit()
        if heap:
            self._arm(heap[0][0])


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()
_last: tuple[weakref.ref[asyncio.AbstractEventLoop] | None, _Watch | None] = (None, None)


def _watch_of(loop: asyncio.AbstractEventLoop) -> _Watch:
    global _last
    last_loop, last_watch = _last
    if last_watch is not None and last_loop is not None and last_loop() is loop:
        return last_watch
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = _Watch(loop)
    _last = (weakref.ref(loop), watch)
    return watch


class backend_deadline:  # lower case: used as asyncio.timeout is
    """``async with backend_deadline(0.05):`` raises ``TimeoutError`` when the block overruns.

    It cancels the task the way ``asyncio.timeout`` does (and turns that
    cancellation, and only that one, into ``TimeoutError``), with one timer
    handle per block: it runs around every Redis call of a request.

    Args:
        seconds: the limit; the block is cancelled one loop turn after it.
    """

    __slots__ = ("_cancelling", "_done", "_expired", "_handle", "_seconds", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._handle: asyncio.Handle | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False
        self._done = False

    async def __aenter__(self) -> backend_deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            msg = "backend_deadline must be used inside a task"
            raise RuntimeError(msg)
        self._task = task
        self._cancelling = task.cancelling()
        _watch_of(loop).add(self, loop.time() + self._seconds)
        return self

    # The limit passed (the shared timer calls this). The steps below hop once
    # through the ready queue, then once through the timers, then once more
    # through the ready queue: on asyncio's loop and on uvloop alike, that puts
    # an I/O poll, and the callbacks it scheduled (the wake-up of a caller
    # whose reply was waiting in the socket), before the decision.

    def _after_limit(self) -> None:
        if self._task is not None:
            self._handle = self._task.get_loop().call_soon(self._before_poll)

    def _before_poll(self) -> None:
        if self._task is not None:
            loop = self._task.get_loop()
            self._handle = loop.call_at(loop.time(), self._after_poll)

    def _after_poll(self) -> None:
        if self._task is not None:
            self._handle = self._task.get_loop().call_soon(self._expire)

    def _expire(self) -> None:
        self._handle = None
        if self._task is not None:
            self._expired = True
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        task, self._task = self._task, None  # the shared heap may hold this block a while
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # As asyncio.timeout: only a cancellation this block asked for, and
        # not also asked for by someone else, becomes TimeoutError.
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def expired(self) -> bool:
        """True once the limit passed (the block was cancelled or is about to be)."""
        return self._expired
