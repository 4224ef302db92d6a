"""Background jobs: registry, client, worker and queue backends.

Apps register processors in a :class:`JobRegistry`, enqueue through
:func:`get_job_client` and run :class:`WorkerManager` in separate processes
(``app-kernel worker MODULE:APP``). Delivery is at-least-once: a processor
may run again after a crash, so make it idempotent (``ctx.job_id`` is stable).
"""

from app_kernel.jobs.backends.base import JobInfo, JobQueue, RetryPolicy
from app_kernel.jobs.client import EnqueueResult, JobClient
from app_kernel.jobs.context import JobContext
from app_kernel.jobs.errors import (
    InvalidJobError,
    JobError,
    PermanentError,
    Retry,
    TaskRegistrationError,
    UnknownTaskError,
)
from app_kernel.jobs.manager import get_job_client, get_worker_manager
from app_kernel.jobs.registry import JobRegistry, ProcessorFunc
from app_kernel.jobs.worker import WorkerManager

__all__ = (
    "EnqueueResult",
    "InvalidJobError",
    "JobClient",
    "JobContext",
    "JobError",
    "JobInfo",
    "JobQueue",
    "JobRegistry",
    "PermanentError",
    "ProcessorFunc",
    "Retry",
    "RetryPolicy",
    "TaskRegistrationError",
    "UnknownTaskError",
    "WorkerManager",
    "get_job_client",
    "get_worker_manager",
)
