"""Task names mapped to the app's processors.

A processor is ``async def handler(payload: dict, ctx: JobContext) -> Any``; a
plain function of the same shape runs in the worker's thread pool. Names
starting with ``kernel:`` belong to the kernel's own tasks and are refused in
an app's registry. Metadata (``timeout``, ``max_attempts``) is advisory: it
fills in what an enqueue call leaves out.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from app_kernel.jobs.errors import TaskRegistrationError

if TYPE_CHECKING:
    from app_kernel.jobs.context import JobContext

__all__ = ("KERNEL_TASK_PREFIX", "JobRegistry", "ProcessorFunc", "TaskInfo", "kernel_tasks")

ProcessorFunc = Callable[[dict[str, Any], "JobContext"], Any]
"""``(payload, ctx) -> result``: a coroutine function, or a plain function run in a thread."""

KERNEL_TASK_PREFIX = "kernel:"
MAX_TASK_NAME_LENGTH = 200

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A registered processor and its advisory metadata."""

    name: str
    processor: ProcessorFunc
    timeout: float | None
    max_attempts: int | None
    description: str | None
    is_async: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
            "description": self.description,
            "is_async": self.is_async,
        }


def _is_async(fn: Callable[..., Any]) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


class JobRegistry:
    """Registry mapping task names to processor functions."""

    def __init__(self, *, _kernel_internal: bool = False) -> None:
        self._tasks: dict[str, TaskInfo] = {}
        self._internal = _kernel_internal

    def register(
        self,
        name: str,
        processor: ProcessorFunc,
        timeout: float | None = None,
        max_attempts: int | None = None,
        description: str | None = None,
    ) -> None:
        """Register a task processor with optional configuration.

        Args:
            name: the task name enqueued jobs carry.
            processor: ``(payload, ctx) -> result``, async or plain.
            timeout: run-time limit in seconds when the enqueue call names none.
            max_attempts: attempts when the enqueue call names none.
            description: free text shown by tooling.

        Raises:
            TaskRegistrationError: the name is taken, empty, too long or reserved
                (``kernel:``), the processor is not callable, or an option is not positive.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_TASK_NAME_LENGTH:
            msg = f"task name: expected 1 to {MAX_TASK_NAME_LENGTH} characters, got {name!r}"
            raise TaskRegistrationError(msg)
        if name.startswith(KERNEL_TASK_PREFIX) and not self._internal:
            msg = f"task name {name!r}: names starting with {KERNEL_TASK_PREFIX!r} are reserved"
            raise TaskRegistrationError(msg)
        if name in self._tasks:
            msg = f"task {name!r} is already registered; each name has one processor"
            raise TaskRegistrationError(msg)
        if not callable(processor):
            msg = f"task {name!r}: processor must be callable, got {processor!r}"
            raise TaskRegistrationError(msg)
        if timeout is not None and not timeout > 0:
            msg = f"task {name!r}: timeout must be positive seconds, got {timeout!r}"
            raise TaskRegistrationError(msg)
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            msg = f"task {name!r}: max_attempts must be an integer >= 1, got {max_attempts!r}"
            raise TaskRegistrationError(msg)
        self._tasks[name] = TaskInfo(
            name=name,
            processor=processor,
            timeout=float(timeout) if timeout is not None else None,
            max_attempts=max_attempts,
            description=description,
            is_async=_is_async(processor),
        )

    def task(
        self,
        name: str,
        timeout: float | None = None,
        max_attempts: int | None = None,
        description: str | None = None,
    ) -> Callable[[F], F]:
        """Decorator for registering a task processor; returns the function unchanged."""

        def decorate(fn: F) -> F:
            self.register(name, fn, timeout, max_attempts, description or _first_line(fn))
            return fn

        return decorate

    def get(self, name: str) -> ProcessorFunc | None:
        """The processor registered under ``name``, or None."""
        info = self._tasks.get(name)
        return info.processor if info is not None else None

    def get_info(self, name: str) -> TaskInfo | None:
        """The processor and metadata registered under ``name``, or None."""
        return self._tasks.get(name)

    def get_metadata(self, name: str) -> dict[str, Any] | None:
        """``{"name", "timeout", "max_attempts", "description", "is_async"}`` or None."""
        info = self._tasks.get(name)
        return info.to_dict() if info is not None else None

    def has(self, name: str) -> bool:
        """Whether ``name`` is registered."""
        return name in self._tasks

    @property
    def tasks(self) -> Mapping[str, ProcessorFunc]:
        """Every registered processor by name (a read-only view)."""
        return MappingProxyType({name: info.processor for name, info in self._tasks.items()})

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tasks))

    def __repr__(self) -> str:
        return f"JobRegistry({sorted(self._tasks)!r})"


def _first_line(fn: Callable[..., Any]) -> str | None:
    doc = inspect.getdoc(fn)
    return doc.strip().splitlines()[0] if doc else None


kernel_tasks = JobRegistry(_kernel_internal=True)
"""The kernel's own tasks (``kernel:...``); never refused as unknown by the client."""
