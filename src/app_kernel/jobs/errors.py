"""Exceptions of the jobs area, and the two a handler raises on purpose.

The tree::

    KernelError
    └── JobError
        ├── UnknownTaskError (also LookupError)   no processor under that task name
        ├── TaskRegistrationError (also ValueError) a name registered twice or reserved
        └── InvalidJobError (also ValueError)     a bad payload, priority, id or option

    Exception
    ├── Retry            raised by a handler: try again after ``delay_seconds``
    └── PermanentError   raised by a handler: the job is dead, no further attempt
"""

from __future__ import annotations

from app_kernel.errors import KernelError, PermanentError

__all__ = (
    "InvalidJobError",
    "JobError",
    "PermanentError",
    "Retry",
    "TaskRegistrationError",
    "UnknownTaskError",
)


class JobError(KernelError):
    """Base class of the jobs area's errors."""


class UnknownTaskError(JobError, LookupError):
    """A job names a task that has no registered processor."""

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        msg = f"unknown task {task_name!r}: register a processor for it in the JobRegistry"
        super().__init__(msg)


class TaskRegistrationError(JobError, ValueError):
    """A task name was registered twice, is reserved, or is not a usable name."""


class InvalidJobError(JobError, ValueError):
    """A jobs call was refused for a bad argument, before anything was read or written."""


class Retry(Exception):
    """Raised by a handler to run the job again after ``delay_seconds``.

    The attempt still counts: a job out of attempts goes dead.
    """

    def __init__(self, delay_seconds: float = 0.0, reason: str | None = None) -> None:
        if delay_seconds < 0:
            msg = f"Retry delay_seconds must be zero or more, got {delay_seconds!r}"
            raise ValueError(msg)
        self.delay_seconds = float(delay_seconds)
        self.reason = reason
        super().__init__(reason or f"retry requested in {self.delay_seconds:g}s")
