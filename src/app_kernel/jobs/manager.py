"""Process-wide accessors: the current kernel's job client and a worker for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from app_kernel._runtime import current_kernel
from app_kernel.jobs.worker import WorkerManager

if TYPE_CHECKING:
    from app_kernel.jobs.client import JobClient
    from app_kernel.jobs.registry import JobRegistry

__all__ = ("get_job_client", "get_worker_manager")


def get_job_client() -> JobClient:
    """The job client of the kernel set up by ``init_app_kernel``/``create_service``.

    Raises:
        KernelNotInitialized: no kernel was set up in this process.
    """
    return current_kernel("calling get_job_client()").jobs


def get_worker_manager(
    *,
    registry: JobRegistry | None = None,
    concurrency: int | None = None,
    queues: Sequence[str] | None = None,
) -> WorkerManager:
    """A :class:`WorkerManager` for the current kernel; ``await manager.start()`` runs it.

    ``start()`` opens the kernel, installs SIGTERM/SIGINT handlers and returns
    once the worker has shut down.

    Raises:
        KernelNotInitialized: no kernel was set up in this process.
    """
    kernel = current_kernel("calling get_worker_manager()")
    return WorkerManager(kernel, registry, concurrency=concurrency, queues=queues)
