"""What a running handler knows about its job: :class:`JobContext`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from app_kernel.observability.logging import get_logger

__all__ = ("JobContext",)

ProgressSink = Callable[[float, "str | None"], Awaitable[bool]]


class JobContext:
    """The job a handler runs, handed to it as ``ctx``.

    Attributes:
        job_id: the job's id (stable across attempts: use it as an idempotency key).
        task_name: the registered task name.
        attempt: this attempt, from 1.
        max_attempts: attempts the job has in all.
        user_id: who enqueued it, if given.
        metadata: the enqueue call's metadata.
        enqueued_at: seconds since the epoch.
        log: a logger bound to ``job_id`` and ``task``.
        cancel_event: set when the job was cancelled, its lease was lost or the
            worker is shutting down; an async handler is also cancelled.
    """

    def __init__(
        self,
        *,
        job_id: str,
        task_name: str,
        attempt: int,
        max_attempts: int,
        user_id: str | None,
        metadata: Mapping[str, Any],
        enqueued_at: float,
        progress_sink: ProgressSink | None = None,
    ) -> None:
        self.job_id = job_id
        self.task_name = task_name
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.user_id = user_id
        self.metadata = metadata
        self.enqueued_at = enqueued_at
        self.log: structlog.stdlib.BoundLogger = get_logger("app_kernel.jobs").bind(
            job_id=job_id, task=task_name, attempt=attempt
        )
        self.cancel_event = asyncio.Event()
        self._progress_sink = progress_sink

    @property
    def logger(self) -> structlog.stdlib.BoundLogger:
        """Alias of :attr:`log`."""
        return self.log

    @property
    def cancelled(self) -> bool:
        """Whether the handler has been asked to stop."""
        return self.cancel_event.is_set()

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure now makes the job dead."""
        return self.attempt >= self.max_attempts

    async def progress(self, fraction: float, message: str | None = None) -> bool:
        """Record progress from 0.0 to 1.0; False when the job is no longer ours.

        Raises:
            ValueError: ``fraction`` is outside 0.0 to 1.0.
        """
        if not 0.0 <= fraction <= 1.0:
            msg = f"progress fraction must be between 0.0 and 1.0, got {fraction!r}"
            raise ValueError(msg)
        if self._progress_sink is None:
            return True
        return await self._progress_sink(float(fraction), message)

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!r}, task_name={self.task_name!r}, "
            f"attempt={self.attempt}/{self.max_attempts})"
        )
