"""Detect callbacks that block an asyncio event loop.

asyncio's debug mode logs ``Executing <Handle ...> took 0.201 seconds`` on the ``asyncio``
logger whenever one callback (one step of a coroutine) runs longer than the loop's
``slow_callback_duration``. :func:`detect_blocking` turns that on for one loop and collects
the reports, so the root conftest can fail any async test that blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Iterator

SLOW_CALLBACK_SECONDS = 0.2 if os.environ.get("PYTEST_XDIST_WORKER") else 0.1
"""A single callback running longer than this counts as blocking the loop.

The limit is wall time. Under ``make test`` two pytest-xdist workers share two
cores with Redis, PostgreSQL and the tests' subprocesses, so a step's time also
holds the turns the OS gave them: a claim of 100 jobs measured 0.110 s there.
The limit doubles under xdist; a one-process run keeps 0.1 s.
"""

_SLOW_CALLBACK = re.compile(r"^Executing .+ took \d+(\.\d+)? seconds$", re.DOTALL)


class _SlowCallbackRecorder(logging.Handler):
    """Keeps the messages of asyncio's slow-callback reports."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _SLOW_CALLBACK.match(message):
            self.reports.append(message)


@contextlib.contextmanager
def detect_blocking(
    loop: asyncio.AbstractEventLoop, threshold: float = SLOW_CALLBACK_SECONDS
) -> Iterator[list[str]]:
    """Put ``loop`` in debug mode and yield the list that collects slow-callback reports.

    The list fills while the block runs; an empty list at the end means nothing blocked
    the loop for ``threshold`` seconds or more. The loop's debug flag, its
    ``slow_callback_duration`` and the ``asyncio`` logger are restored on exit.
    """
    logger = logging.getLogger("asyncio")
    recorder = _SlowCallbackRecorder()
    old_debug = loop.get_debug()
    old_threshold = loop.slow_callback_duration
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        # Somebody silenced asyncio (e.g. a logging config); the reports are WARNINGs.
        logger.setLevel(logging.WARNING)
    logger.addHandler(recorder)
    loop.set_debug(True)
    loop.slow_callback_duration = threshold
    try:
        yield recorder.reports
    finally:
        loop.slow_callback_duration = old_threshold
        if not loop.is_closed():
            loop.set_debug(old_debug)
        logger.removeHandler(recorder)
        logger.setLevel(old_level)
