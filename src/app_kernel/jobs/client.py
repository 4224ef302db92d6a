"""Enqueue and inspect jobs: :class:`JobClient`.

Every check runs before anything is written: an unknown task name, a payload
that is not a JSON object or is larger than ``max_payload_bytes``, a bad
priority, job id or option raise at once. Task names are checked against the
registry the client was given (the app's, plus the kernel's ``kernel:`` tasks);
a client built without a registry, as in a process that only enqueues, cannot
know the worker's tasks and accepts any name (the worker then moves a job with
an unknown name to dead).

An enqueue made while a request is served stores the request's trace id
(:func:`~app_kernel.observability.tracing.current_trace_id`) in the job's
metadata under ``trace_id`` unless the caller set one; the worker binds it to
the job's logs. Written jobs are counted in ``jobs_enqueued_total{task}``
(``__unknown__`` for names the client's registry does not know).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app_kernel.jobs.backends.base import PRIORITIES, JobInfo, JobQueue, JobSpec, Priority
from app_kernel.jobs.errors import InvalidJobError, UnknownTaskError
from app_kernel.jobs.metrics import JobMetrics
from app_kernel.jobs.registry import KERNEL_TASK_PREFIX, JobRegistry, kernel_tasks
from app_kernel.observability.query_params import MAX_OFFSET
from app_kernel.observability.tracing import current_trace_id
from app_kernel.settings import JobSettings

if TYPE_CHECKING:
    from app_kernel.observability.metrics import Metrics

__all__ = ("MAX_DEAD_PAGE", "MAX_JOB_ID_LENGTH", "EnqueueResult", "JobClient", "to_json")

MAX_JOB_ID_LENGTH = 128
MAX_USER_ID_LENGTH = 255
"""The longest ``user_id`` a job takes (an OpenID Connect ``sub`` has at most 255)."""


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What an enqueue did: ``deduplicated`` when a job with this id was
    already waiting or running (nothing was written)."""

    job_id: str
    task_name: str
    priority: Priority
    enqueued_at: float
    deduplicated: bool = False


MAX_DEAD_PAGE = 1000
"""The most dead jobs :meth:`JobClient.list_dead` returns at once."""


def to_json(value: Any, what: str) -> str:
    """Compact JSON text of ``value``; :class:`InvalidJobError` naming ``what`` otherwise."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        msg = f"{what} is not JSON-serialisable: {exc}"
        raise InvalidJobError(msg) from exc
    except RecursionError:
        msg = f"{what} is nested too deeply to be encoded as JSON"
        raise InvalidJobError(msg) from None


class JobClient:
    """Client for enqueueing jobs.

    Timeout and attempts come from the enqueue call, else the task's registry
    metadata, else :class:`~app_kernel.settings.JobSettings`.
    """

    def __init__(
        self,
        queue: JobQueue,
        settings: JobSettings,
        registry: JobRegistry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.registry = registry
        self.job_metrics = JobMetrics(metrics, registry) if metrics is not None else None

    def _count_enqueued(self, task_name: str, count: int) -> None:
        if self.job_metrics is not None and count:
            self.job_metrics.count("enqueued", task_name, count)

    # --- checks --------------------------------------------------------------------

    def _check_task(self, task_name: str) -> None:
        if not isinstance(task_name, str) or not task_name:
            msg = f"task_name: expected a non-empty string, got {task_name!r}"
            raise InvalidJobError(msg)
        if task_name.startswith(KERNEL_TASK_PREFIX) or task_name in kernel_tasks:
            return
        if self.registry is not None and task_name not in self.registry:
            raise UnknownTaskError(task_name)

    def _metadata(self, task_name: str) -> tuple[float | None, int | None]:
        for registry in (self.registry, kernel_tasks):
            info = registry.get_info(task_name) if registry is not None else None
            if info is not None:
                return info.timeout, info.max_attempts
        return None, None

    def _spec(
        self,
        task_name: str,
        payload: Any,
        *,
        job_id: str | None,
        priority: str,
        user_id: str | None,
        timeout: float | None,
        max_attempts: int | None,
        delay_seconds: float | None,
        metadata: Mapping[str, Any] | None,
        on_success: str | None,
        on_failure: str | None,
    ) -> JobSpec:
        self._check_task(task_name)
        for follow_up in (on_success, on_failure):
            if follow_up is not None:
                self._check_task(follow_up)
        if priority not in PRIORITIES:
            msg = f"priority: expected one of {', '.join(PRIORITIES)}, got {priority!r}"
            raise InvalidJobError(msg)
        if job_id is None:
            job_id = uuid.uuid4().hex
        elif (
            not isinstance(job_id, str)
            or not job_id
            or len(job_id) > MAX_JOB_ID_LENGTH
            or not job_id.isprintable()
            or job_id != job_id.strip()
        ):
            msg = (
                f"job_id: expected 1 to {MAX_JOB_ID_LENGTH} printable characters without "
                f"surrounding spaces, got {job_id!r}"
            )
            raise InvalidJobError(msg)
        if not isinstance(payload, Mapping):
            msg = f"payload: expected a dict (a JSON object), got {type(payload).__name__}"
            raise InvalidJobError(msg)
        payload_json = self._capped_json(payload, "payload")
        if metadata is not None and not isinstance(metadata, Mapping):
            msg = f"metadata: expected a dict (a JSON object), got {type(metadata).__name__}"
            raise InvalidJobError(msg)
        meta = dict(metadata or {})
        trace_id = current_trace_id()
        if trace_id is not None and "trace_id" not in meta:
            meta["trace_id"] = trace_id
        metadata_json = self._capped_json(meta, "metadata")
        meta_timeout, meta_attempts = self._metadata(task_name)
        final_timeout = timeout if timeout is not None else meta_timeout
        if final_timeout is None:
            final_timeout = self.settings.default_timeout_seconds
        if not (isinstance(final_timeout, int | float) and math.isfinite(final_timeout)) or (
            final_timeout <= 0
        ):
            msg = f"timeout: expected positive seconds, got {final_timeout!r}"
            raise InvalidJobError(msg)
        attempts = max_attempts if max_attempts is not None else meta_attempts
        if attempts is None:
            attempts = self.settings.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            msg = f"max_attempts: expected an integer of 1 or more, got {attempts!r}"
            raise InvalidJobError(msg)
        delay = 0.0 if delay_seconds is None else delay_seconds
        if not (isinstance(delay, int | float) and math.isfinite(delay)) or delay < 0:
            msg = f"delay_seconds: expected zero or more seconds, got {delay_seconds!r}"
            raise InvalidJobError(msg)
        if user_id is not None and not isinstance(user_id, str):
            user_id = str(user_id)
        if user_id is not None and (
            not user_id or len(user_id) > MAX_USER_ID_LENGTH or not user_id.isprintable()
        ):
            msg = (
                f"user_id: expected 1 to {MAX_USER_ID_LENGTH} printable characters, "
                f"got {user_id[:40]!r}{'...' if len(user_id) > 40 else ''}"
            )
            raise InvalidJobError(msg)
        return JobSpec(
            job_id=job_id,
            task_name=task_name,
            payload_json=payload_json,
            priority=priority,
            user_id=user_id,
            timeout_seconds=float(final_timeout),
            max_attempts=attempts,
            delay_seconds=float(delay),
            metadata_json=metadata_json,
            on_success=on_success,
            on_failure=on_failure,
        )

    def _capped_json(self, value: Mapping[str, Any], what: str) -> str:
        """``value`` as JSON text, refused over ``jobs.max_payload_bytes``."""
        text = to_json(dict(value), what)
        # As the stores keep it: a lone surrogate (json.loads makes one of "\ud800")
        # has no UTF-8 form, and the backends write such text with surrogatepass.
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.settings.max_payload_bytes:
            msg = (
                f"{what} is {size} bytes of JSON, over jobs.max_payload_bytes "
                f"({self.settings.max_payload_bytes}); store large data elsewhere and "
                "enqueue a reference"
            )
            raise InvalidJobError(msg)
        return text

    # --- enqueue -------------------------------------------------------------------

    async def enqueue(
        self,
        task_name: str,
        payload: dict[str, Any],
        job_id: str | None = None,
        priority: str = "normal",
        user_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the job's limit, from the spec
        max_attempts: int | None = None,
        delay_seconds: float | None = None,
        metadata: dict[str, Any] | None = None,
        on_success: str | None = None,
        on_failure: str | None = None,
    ) -> EnqueueResult:
        """Enqueue a job for processing.

        Args:
            task_name: a registered task.
            payload: a JSON object handed to the processor.
            job_id: your id for the job (at most 128 printable characters); a job
                with this id still waiting or running is not enqueued again.
            priority: ``high``, ``normal`` or ``low``.
            user_id: who the job runs for (at most 255 printable characters).
            timeout: run-time limit in seconds of each attempt.
            max_attempts: attempts before the job goes dead.
            delay_seconds: run no sooner than this.
            metadata: a JSON object available as ``ctx.metadata`` (capped like
                the payload).
            on_success: task enqueued when the job succeeds, with payload
                ``{"job_id", "result", "payload"}``.
            on_failure: task enqueued when the job goes dead, with payload
                ``{"job_id", "error", "payload"}``.

        Raises:
            UnknownTaskError: a task name is not registered.
            InvalidJobError: the payload, priority, id or an option is unusable.
        """
        spec = self._spec(
            task_name,
            payload,
            job_id=job_id,
            priority=priority,
            user_id=user_id,
            timeout=timeout,
            max_attempts=max_attempts,
            delay_seconds=delay_seconds,
            metadata=metadata,
            on_success=on_success,
            on_failure=on_failure,
        )
        (outcome,) = await self.queue.enqueue([spec])
        self._count_enqueued(spec.task_name, 0 if outcome.deduplicated else 1)
        return EnqueueResult(
            outcome.job_id, spec.task_name, spec.priority, outcome.enqueued_at, outcome.deduplicated
        )

    async def enqueue_many(
        self,
        task_name: str,
        payloads: Sequence[dict[str, Any]],
        priority: str = "normal",
        user_id: str | None = None,
    ) -> list[EnqueueResult]:
        """Enqueue multiple jobs in one backend call; all are checked first."""
        specs = [
            self._spec(
                task_name,
                payload,
                job_id=None,
                priority=priority,
                user_id=user_id,
                timeout=None,
                max_attempts=None,
                delay_seconds=None,
                metadata=None,
                on_success=None,
                on_failure=None,
            )
            for payload in payloads
        ]
        if not specs:
            return []
        outcomes = await self.queue.enqueue(specs)
        self._count_enqueued(task_name, sum(not o.deduplicated for o in outcomes))
        return [
            EnqueueResult(o.job_id, s.task_name, s.priority, o.enqueued_at, o.deduplicated)
            for s, o in zip(specs, outcomes, strict=True)
        ]

    # --- inspect -------------------------------------------------------------------

    async def get_queue_status(self) -> dict[str, Any]:
        """``{"queues": {"high", "normal", "low"}, "scheduled", "running", "dead",
        "oldest_waiting_seconds", "workers"}``."""
        status = dict(await self.queue.status())
        status["workers"] = await self.queue.workers()
        return status

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's record, or None when unknown or expired."""
        return await self.queue.get(job_id)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting job, or ask the worker running it to stop.

        False when the job is unknown or already finished.
        """
        return await self.queue.cancel(job_id)

    async def list_dead(self, limit: int = 100, offset: int = 0) -> list[JobInfo]:
        """Dead jobs, most recent first: ``limit`` (1 to 1,000) from ``offset``.

        Raises:
            InvalidJobError: ``limit`` or ``offset`` out of range. The stores
                read a limit of 0 or below differently (SQLite: no limit;
                Redis: to the end of the list), so neither is passed on.
        """
        for name, value, low, high in (
            ("limit", limit, 1, MAX_DEAD_PAGE),
            ("offset", offset, 0, MAX_OFFSET),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                msg = f"{name}: expected a whole number from {low} to {high:,}, got {value!r}"
                raise InvalidJobError(msg)
        return await self.queue.list_dead(limit=limit, offset=offset)

    async def retry_dead(self, job_id: str | None = None) -> int:
        """Requeue one dead job (or all, when ``job_id`` is None) with fresh attempts."""
        return await self.queue.retry_dead(job_id)

    async def purge_dead(self, job_id: str | None = None) -> int:
        """Delete one dead job (or all, when ``job_id`` is None)."""
        return await self.queue.purge_dead(job_id)
