"""Calling an app's checker: bounded in time, and only a real ``True`` allows."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from app_kernel.observability.logging import get_logger

__all__ = ("DEFAULT_TIMEOUT_SECONDS", "answer_of", "ask", "validate_checker")

DEFAULT_TIMEOUT_SECONDS = 10.0

_log = get_logger("app_kernel.access_control")


def validate_checker(checker: object, methods: tuple[str, ...], protocol: str) -> None:
    """Raise ``TypeError`` unless ``checker`` has every method of ``protocol``."""
    missing = [name for name in methods if not callable(getattr(checker, name, None))]
    if missing:
        msg = (
            f"{type(checker).__name__} is not a {protocol}: it has no "
            f"{', '.join(missing)} method(s); expected async {', '.join(methods)}"
        )
        raise TypeError(msg)


async def answer_of(
    checker: object, method: str, args: tuple[str, ...], timeout_seconds: float | None
) -> Any:
    """Await ``checker.method(*args)`` within ``timeout_seconds``; exceptions propagate.

    Raises:
        TypeError: the method is not a coroutine function.
        TimeoutError: the checker did not answer in time.
    """
    async with asyncio.timeout(timeout_seconds):
        outcome = getattr(checker, method)(*args)
        if not inspect.isawaitable(outcome):
            msg = f"{type(checker).__name__}.{method} must be async (it returned {outcome!r})"
            raise TypeError(msg)
        return await outcome


async def ask(
    checker: object, method: str, args: tuple[str, ...], timeout_seconds: float | None
) -> bool:
    """``checker.method(*args)`` as a decision: True only if it returned ``True``.

    Any other answer (None, 1, "yes") denies and is logged, so a checker that
    forgets a ``return`` cannot open a door.
    """
    answer = await answer_of(checker, method, args, timeout_seconds)
    if isinstance(answer, bool):
        return answer
    _log.warning(
        "access checker returned a non-bool; denying",
        checker=type(checker).__name__,
        method=method,
        returned=type(answer).__name__,
    )
    return False
