"""The contract of a job queue backend.

A job moves through these states::

    queued ──claim──▶ running ──complete──▶ succeeded
      ▲  ▲              │ │
      │  │              │ └─fail / lease expired──▶ retrying ──due──▶ queued
      │  └──release─────┘        (attempts left)
      │                 └─fail / lease expired──▶ dead ──retry_dead──▶ queued
    scheduled ──due──▶ queued                (no attempts left)
    queued / scheduled / retrying ──cancel──▶ cancelled

Delivery is at-least-once. ``claim`` moves a job from ready to running
atomically, counts the attempt and hands out a fencing token; only the holder
of the current token can heartbeat, complete, fail or release the job. A
running job whose lease is not renewed is reaped by any process: the crash
counts as an attempt, so a job that kills its worker every time ends dead
instead of looping. Times are seconds since the epoch as floats; the Redis
backend uses the server's clock, the SQLite backend the host's. Every record
of a finished job expires (``result_ttl_seconds`` / ``dead_ttl_seconds``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = (
    "CANCELLED_TTL_SECONDS",
    "Claimed",
    "EnqueueOutcome",
    "FailOutcome",
    "HeartbeatReply",
    "JobInfo",
    "JobQueue",
    "JobSpec",
    "JobStatus",
    "Priority",
    "RetryPolicy",
)

Priority = Literal["high", "normal", "low"]
JobStatus = Literal["queued", "scheduled", "running", "retrying", "succeeded", "dead", "cancelled"]
FailOutcome = Literal["retrying", "dead", "lost"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
CANCELLED_TTL_SECONDS = 7 * 24 * 3600.0
"""How long every backend keeps a cancelled job's record."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job to enqueue. Payload and metadata are already JSON text (checked by the client)."""

    job_id: str
    task_name: str
    payload_json: str
    priority: Priority = "normal"
    user_id: str | None = None
    timeout_seconds: float = 300.0
    max_attempts: int = 3
    delay_seconds: float = 0.0
    metadata_json: str = "{}"
    on_success: str | None = None
    on_failure: str | None = None


@dataclass(frozen=True, slots=True)
class EnqueueOutcome:
    """What enqueue did with one spec: ``deduplicated`` when a job with this id
    was already queued, scheduled or running (nothing was written)."""

    job_id: str
    enqueued_at: float
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job handed to a worker. ``token`` fences every later call on it."""

    job_id: str
    task_name: str
    payload_json: str
    priority: Priority
    attempt: int
    max_attempts: int
    timeout_seconds: float
    user_id: str | None
    metadata_json: str
    enqueued_at: float
    token: str
    on_success: str | None = None
    on_failure: str | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """``owned`` is False when the lease was lost (reaped, cancelled, completed
    elsewhere); ``cancel_requested`` asks the worker to stop the handler."""

    owned: bool
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: a delay drawn from
    ``[0, min(cap, base * 2 ** (attempt - 1))]``; at least ``min_delay_seconds``."""

    base_seconds: float = 1.0
    cap_seconds: float = 300.0
    min_delay_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class JobInfo:
    """Everything known about one job (``get``, ``list_dead``)."""

    job_id: str
    task_name: str
    status: JobStatus
    priority: Priority
    attempt: int
    max_attempts: int
    payload: Any
    user_id: str | None
    metadata: Mapping[str, Any]
    enqueued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float | None = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    worker_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "job_id": self.job_id,
            "task_name": self.task_name,
            "status": self.status,
            "priority": self.priority,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "payload": self.payload,
            "user_id": self.user_id,
            "metadata": dict(self.metadata),
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "run_at": self.run_at,
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "worker_id": self.worker_id,
        }


class JobQueue(Protocol):
    """**Protocol**: a durable queue shared by the API and worker processes."""

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[EnqueueOutcome]:
        """Write jobs in one round trip (one transaction), in order.

        A spec whose ``job_id`` is queued, scheduled, retrying or running is not
        written again (``deduplicated``); a finished one is replaced. A positive
        ``delay_seconds`` makes the job ``scheduled`` until it is due.
        """

    async def claim(
        self,
        worker_id: str,
        limit: int,
        *,
        lease_seconds: float,
        queues: Sequence[Priority] = PRIORITIES,
        weights: Mapping[Priority, int] | None = None,
    ) -> list[Claimed]:
        """Atomically take up to ``limit`` ready jobs, promoting due scheduled
        and retrying jobs first.

        Each claimed job's attempt is incremented and it gets a lease until
        now + ``lease_seconds`` and a fresh token. ``weights`` (for example
        ``{"high": 6, "normal": 3, "low": 1}``) interleave the priorities so
        ``low`` is never starved: in each round of ``sum(weights)`` picks each
        priority gets its weight, unused picks going to the next priority in
        order high, normal, low; ``None`` means strict priority order. While
        fewer high jobs wait than the high weight, all of them come first.
        """

    async def wait_for_work(self, timeout_seconds: float) -> None:
        """Return when a job may be ready (enqueue, retry or due scheduled
        job), or after ``timeout_seconds``. Redis blocks on a wake-up list;
        SQLite polls no faster than needed for a 100 ms delay bound."""

    async def heartbeat(self, job_id: str, token: str, lease_seconds: float) -> HeartbeatReply:
        """Extend the lease if ``token`` still owns the job."""

    async def progress(self, job_id: str, token: str, fraction: float, message: str | None) -> bool:
        """Record progress (0.0 to 1.0) if ``token`` still owns the job."""

    async def complete(
        self,
        job_id: str,
        token: str,
        result_json: str,
        *,
        result_ttl_seconds: float,
        on_success: JobSpec | None = None,
    ) -> bool:
        """Mark succeeded and store the result, only if ``token`` owns the job;
        ``on_success`` is enqueued in the same atomic step. False when the
        token was fenced off (nothing changed)."""

    async def fail(
        self,
        job_id: str,
        token: str,
        *,
        error: str,
        traceback: str | None,
        retry_delay_seconds: float | None,
        dead_ttl_seconds: float,
        on_failure: JobSpec | None = None,
    ) -> FailOutcome:
        """Record a failed attempt, only if ``token`` owns the job.

        With ``retry_delay_seconds`` set and attempts left, the job becomes
        ``retrying`` and is due after the delay; otherwise it becomes ``dead``
        (kept for ``dead_ttl_seconds``) and ``on_failure`` is enqueued in the
        same atomic step. ``lost`` when the token was fenced off.
        """

    async def release(self, job_id: str, token: str) -> bool:
        """Hand a running job back to its queue at once without spending the
        attempt (graceful shutdown); only if ``token`` owns it."""

    async def reap(self, *, retry: RetryPolicy, dead_ttl_seconds: float, limit: int = 100) -> int:
        """Treat up to ``limit`` expired leases as failed attempts ("lease
        expired"): retry with backoff or move to dead. Returns how many."""

    async def get(self, job_id: str) -> JobInfo | None:
        """The job's record, or None when unknown or expired."""

    async def cancel(self, job_id: str, *, waiting_only: bool = False) -> bool:
        """Cancel a queued, scheduled or retrying job (removed from its queue);
        for a running job, ask its worker to stop (through the heartbeat),
        unless ``waiting_only``. False when the job is unknown, already
        finished, or (with ``waiting_only``) running."""

    async def list_dead(self, limit: int = 100, offset: int = 0) -> list[JobInfo]:
        """Dead jobs, most recent first."""

    async def retry_dead(self, job_id: str | None = None) -> int:
        """Requeue one dead job (or all) with a fresh set of attempts."""

    async def purge_dead(self, job_id: str | None = None) -> int:
        """Delete one dead job (or all)."""

    async def status(self) -> dict[str, Any]:
        """``{"queues": {"high": n, "normal": n, "low": n}, "scheduled": n,
        "running": n, "dead": n, "oldest_waiting_seconds": s}`` (``scheduled``
        includes retrying jobs; ``oldest_waiting_seconds`` is how long the job
        that has waited longest to start has been able to run, 0.0 when none)."""

    async def register_worker(
        self, worker_id: str, info: Mapping[str, Any], ttl_seconds: float
    ) -> None:
        """Announce (or renew) a live worker; it disappears after ``ttl_seconds``."""

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker at shutdown."""

    async def workers(self) -> list[dict[str, Any]]:
        """The live workers' info dicts (with ``worker_id``)."""
