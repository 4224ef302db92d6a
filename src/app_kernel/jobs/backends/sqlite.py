"""The job queue in the embedded SQLite file, shared by the processes of one host.

Every write is one :meth:`SqliteStore.transaction`: ``BEGIN IMMEDIATE`` takes
the file's write lock first, so a claim's read-then-update is atomic across
every process using the file. Reads (``get``, ``status``, ``list_dead``,
``workers``, ``wait_for_work``) run outside a transaction and never wait for
writers (WAL). Times come from ``clock`` (this host's clock by default).

Choices where :mod:`app_kernel.jobs.backends.base` leaves room:

* Order within a priority is ``run_at`` then rowid. ``run_at`` is when the job
  became ready: its enqueue time, or its due time once a scheduled or retrying
  job is promoted. A released job keeps its ``run_at``, so it returns to its
  old place in line (normally the front).
* The weighted round (picks used per priority) lives in the file, so rounds
  span claims and processes. A priority with no ready job (or not in
  ``queues``) hands its unused picks to the next one; a round ends after
  ``sum(weights)`` picks or when no priority with ready jobs has picks left.
* A token owns its job until the job is reaped: ``heartbeat``, ``complete``
  and ``fail`` still work after the lease deadline if nobody reaped it yet.
* A cancelled job is kept for :data:`CANCELLED_TTL_SECONDS`.
* Reaping a job to ``dead`` enqueues no ``on_failure`` job (``reap`` is given
  no spec); the worker's ``fail`` does.
* Strings that cannot be encoded as UTF-8 (lone surrogates) are stored as
  BLOBs of their ``surrogatepass`` encoding and read back unchanged.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from app_kernel.jobs.backends.base import (
    CANCELLED_TTL_SECONDS,
    PRIORITIES,
    Claimed,
    EnqueueOutcome,
    FailOutcome,
    HeartbeatReply,
    JobInfo,
    JobSpec,
    JobStatus,
    Priority,
    RetryPolicy,
)

if TYPE_CHECKING:
    from app_kernel._sqlite.store import SqliteStore

__all__ = "SqliteJobQueue"

"""How long the record of a cancelled job is kept."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    task_name TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    timeout_seconds REAL NOT NULL,
    user_id TEXT,
    metadata_json TEXT NOT NULL,
    on_success TEXT,
    on_failure TEXT,
    enqueued_at REAL NOT NULL,
    run_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_expires_at REAL,
    token TEXT,
    worker_id TEXT,
    result_json TEXT,
    error TEXT,
    traceback TEXT,
    progress REAL,
    progress_message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (status, priority, run_at);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, run_at);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs (finished_at) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS jobs_expires_at ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_workers (
    worker_id TEXT PRIMARY KEY,
    info_json TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS job_workers_expires_at ON job_workers (expires_at);
CREATE TABLE IF NOT EXISTS job_round (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    used_high INTEGER NOT NULL,
    used_normal INTEGER NOT NULL,
    used_low INTEGER NOT NULL
);
"""

_ACTIVE = ("queued", "scheduled", "retrying", "running")
_PRUNE_LIMIT = 100
_PROMOTE_LIMIT = 1000

_SELECT_JOB = (
    "SELECT job_id, task_name, payload_json, priority, status, attempt, max_attempts,"
    " timeout_seconds, user_id, metadata_json, on_success, on_failure, enqueued_at,"
    " run_at, started_at, finished_at, lease_expires_at, worker_id, result_json, error,"
    " traceback, progress, progress_message, cancel_requested"
    " FROM jobs WHERE job_id = ? AND (expires_at IS NULL OR expires_at > ?)"
)
_SELECT_DEAD = (
    "SELECT job_id, task_name, payload_json, priority, status, attempt, max_attempts,"
    " timeout_seconds, user_id, metadata_json, on_success, on_failure, enqueued_at,"
    " run_at, started_at, finished_at, lease_expires_at, worker_id, result_json, error,"
    " traceback, progress, progress_message, cancel_requested"
    " FROM jobs WHERE status = 'dead' AND expires_at > ?"
    " ORDER BY finished_at DESC, rowid DESC LIMIT ? OFFSET ?"
)
_INSERT = (
    "INSERT INTO jobs (job_id, task_name, payload_json, priority, status, attempt,"
    " max_attempts, timeout_seconds, user_id, metadata_json, on_success, on_failure,"
    " enqueued_at, run_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PROMOTE = (
    "UPDATE jobs SET status = 'queued' WHERE rowid IN (SELECT rowid FROM jobs"
    " WHERE status IN ('scheduled', 'retrying') AND run_at <= ? LIMIT ?)"
)
_READY = (
    "SELECT rowid FROM jobs WHERE status = 'queued' AND priority = ? ORDER BY run_at, rowid LIMIT ?"
)
# One statement claims the picked rows; SQLite draws a fresh token per row.
_CLAIM = (
    "UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = ?,"
    " lease_expires_at = ?, worker_id = ?, token = lower(hex(randomblob(16))),"
    " cancel_requested = 0, progress = NULL, progress_message = NULL"
    " WHERE status = 'queued' AND rowid IN (SELECT value FROM json_each(?))"
    " RETURNING rowid, job_id, task_name, payload_json, priority, attempt, max_attempts,"
    " timeout_seconds, user_id, metadata_json, enqueued_at, token, on_success, on_failure"
)
_HAS_WORK = (
    "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued')"
    " OR EXISTS (SELECT 1 FROM jobs WHERE status = 'scheduled' AND run_at <= ?)"
    " OR EXISTS (SELECT 1 FROM jobs WHERE status = 'retrying' AND run_at <= ?)"
)
_ROUND_ZERO = {"high": 0, "normal": 0, "low": 0}

_SqlText = str | bytes
_rng = random.SystemRandom()


def _sql(value: str) -> _SqlText:
    """``value`` as SQLite can bind it: TEXT, or a BLOB when it is not valid UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")
    return value


def _opt(value: str | None) -> _SqlText | None:
    return None if value is None else _sql(value)


def _text(value: _SqlText) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def _opt_text(value: _SqlText | None) -> str | None:
    return None if value is None else _text(value)


def _json(value: _SqlText | None) -> Any:
    """Parsed JSON; text that is not JSON comes back as the string itself."""
    if value is None:
        return None
    text = _text(value)
    try:
        return json.loads(text)
    except ValueError:
        return text


def _backoff(policy: RetryPolicy, attempt: int) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``, at least the min."""
    exponent = min(max(attempt, 1) - 1, 62)
    ceiling = min(policy.cap_seconds, policy.base_seconds * 2**exponent)
    return max(policy.min_delay_seconds, _rng.uniform(0.0, max(ceiling, 0.0)))


def _insert(conn: sqlite3.Connection, spec: JobSpec, now: float) -> EnqueueOutcome:
    """Write one spec unless a job with its id is still active (see ``enqueue``)."""
    key = _sql(spec.job_id)
    row = conn.execute(
        "SELECT status, enqueued_at, expires_at FROM jobs WHERE job_id = ?", (key,)
    ).fetchone()
    if row is not None:
        status, enqueued_at, expires_at = row
        if status in _ACTIVE and (expires_at is None or expires_at > now):
            return EnqueueOutcome(spec.job_id, enqueued_at, deduplicated=True)
        conn.execute("DELETE FROM jobs WHERE job_id = ?", (key,))
    delayed = spec.delay_seconds > 0
    conn.execute(
        _INSERT,
        (
            key,
            _sql(spec.task_name),
            _sql(spec.payload_json),
            spec.priority,
            "scheduled" if delayed else "queued",
            spec.max_attempts,
            spec.timeout_seconds,
            _opt(spec.user_id),
            _sql(spec.metadata_json),
            _opt(spec.on_success),
            _opt(spec.on_failure),
            now,
            now + spec.delay_seconds if delayed else now,
        ),
    )
    return EnqueueOutcome(spec.job_id, now, deduplicated=False)


def _info(row: tuple[Any, ...]) -> JobInfo:
    (
        job_id,
        task_name,
        payload_json,
        priority,
        status,
        attempt,
        max_attempts,
        timeout_seconds,
        user_id,
        metadata_json,
        on_success,
        on_failure,
        enqueued_at,
        run_at,
        started_at,
        finished_at,
        lease_expires_at,
        worker_id,
        result_json,
        error,
        traceback,
        progress,
        progress_message,
        cancel_requested,
    ) = row
    metadata = _json(metadata_json)
    return JobInfo(
        job_id=_text(job_id),
        task_name=_text(task_name),
        status=cast("JobStatus", status),
        priority=cast("Priority", priority),
        attempt=attempt,
        max_attempts=max_attempts,
        payload=_json(payload_json),
        user_id=_opt_text(user_id),
        metadata=metadata if isinstance(metadata, dict) else {},
        enqueued_at=enqueued_at,
        started_at=started_at,
        finished_at=finished_at,
        run_at=run_at,
        result=_json(result_json),
        error=_opt_text(error),
        traceback=_opt_text(traceback),
        progress=progress,
        progress_message=_opt_text(progress_message),
        worker_id=_opt_text(worker_id),
        extra={
            "timeout_seconds": timeout_seconds,
            "lease_expires_at": lease_expires_at,
            "cancel_requested": bool(cancel_requested),
            "on_success": _opt_text(on_success),
            "on_failure": _opt_text(on_failure),
        },
    )


def _pick(
    ready: dict[Priority, deque[int]],
    weights: Mapping[Priority, int],
    used: dict[str, int],
) -> Priority | None:
    """The priority owed the next pick of the round, or None when the round is spent.

    A priority without ready jobs passes its unused picks on to the next one.
    """
    carry = 0
    for priority in PRIORITIES:
        available = max(weights.get(priority, 0), 0) - used[priority] + carry
        if ready.get(priority):
            if available > 0:
                return priority
            carry = 0
        else:
            carry = max(available, 0)
    return None


def _plan(
    ready: dict[Priority, deque[int]],
    limit: int,
    weights: Mapping[Priority, int] | None,
    used: dict[str, int],
) -> list[int]:
    """Rowids to claim, in pick order; updates the round's ``used`` counts in place."""
    picks: list[int] = []
    round_size = sum(max(w, 0) for w in weights.values()) if weights is not None else 0
    while len(picks) < limit:
        waiting = [p for p in PRIORITIES if ready.get(p)]
        if not waiting:
            break
        priority = waiting[0]
        if weights is not None and round_size > 0:
            chosen = _pick(ready, weights, used)
            if chosen is None:  # every waiting priority spent its picks: new round
                used.update(_ROUND_ZERO)
                chosen = _pick(ready, weights, used)
            priority = chosen or priority
            used[priority] += 1
            if sum(used.values()) >= round_size:
                used.update(_ROUND_ZERO)
        picks.append(ready[priority].popleft())
    return picks


class SqliteJobQueue:
    """:class:`~app_kernel.jobs.backends.base.JobQueue` on the embedded SQLite file.

    Construct it before :meth:`SqliteStore.open`, which creates its tables.

    Args:
        store: the kernel's embedded store.
        clock: seconds since the epoch; every process sharing the file must agree.
        poll_interval_seconds: how often :meth:`wait_for_work` looks for ready jobs.
    """

    def __init__(
        self,
        store: SqliteStore,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval_seconds: float = 0.05,
    ) -> None:
        self._store = store
        self._clock = clock
        self._poll_interval = poll_interval_seconds
        self._last_wake = -float("inf")  # loop time when wait_for_work last found work
        store.add_schema(SCHEMA)

    # --- producers -------------------------------------------------------------------------

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[EnqueueOutcome]:
        """Write jobs in one transaction, in order (see the base protocol)."""
        if not specs:
            return []

        def run(conn: sqlite3.Connection) -> list[EnqueueOutcome]:
            now = self._clock()
            return [_insert(conn, spec, now) for spec in specs]

        return await self._store.transaction(run)

    # --- workers ---------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        limit: int,
        *,
        lease_seconds: float,
        queues: Sequence[Priority] = PRIORITIES,
        weights: Mapping[Priority, int] | None = None,
    ) -> list[Claimed]:
        """Promote due jobs, then take up to ``limit`` ready jobs by priority and weight."""
        if limit <= 0:
            return []
        served = [p for p in PRIORITIES if p in queues]

        def run(conn: sqlite3.Connection) -> list[Claimed]:
            now = self._clock()
            self._prune(conn, now)
            conn.execute(_PROMOTE, (now, _PROMOTE_LIMIT))
            ready: dict[Priority, deque[int]] = {
                p: deque(r[0] for r in conn.execute(_READY, (p, limit))) for p in served
            }
            used = dict(_ROUND_ZERO)
            if weights is not None:
                row = conn.execute(
                    "SELECT used_high, used_normal, used_low FROM job_round WHERE id = 0"
                ).fetchone()
                if row is not None:
                    used = {p: int(n) for p, n in zip(PRIORITIES, row, strict=True)}
            picks = _plan(ready, limit, weights, used)
            if not picks:
                return []
            if weights is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO job_round (id, used_high, used_normal, used_low)"
                    " VALUES (0, ?, ?, ?)",
                    (used["high"], used["normal"], used["low"]),
                )
            rows = conn.execute(
                _CLAIM, (now, now + lease_seconds, _sql(worker_id), json.dumps(picks))
            ).fetchall()
            order = {rowid: i for i, rowid in enumerate(picks)}
            rows.sort(key=lambda r: order[r[0]])
            return [
                Claimed(
                    job_id=_text(r[1]),
                    task_name=_text(r[2]),
                    payload_json=_text(r[3]),
                    priority=r[4],
                    attempt=r[5],
                    max_attempts=r[6],
                    timeout_seconds=r[7],
                    user_id=_opt_text(r[8]),
                    metadata_json=_text(r[9]),
                    enqueued_at=r[10],
                    token=r[11],
                    on_success=_opt_text(r[12]),
                    on_failure=_opt_text(r[13]),
                )
                for r in rows
            ]

        return await self._store.transaction(run)

    async def wait_for_work(self, timeout_seconds: float) -> None:
        """Return when a job is ready or due, or after ``timeout_seconds``.

        Looks every ``poll_interval_seconds``. A call made less than one interval
        after the previous one found work sleeps first, so a worker that keeps
        finding jobs it cannot take (other priorities, taken by others) polls
        no faster than the interval.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_seconds, 0.0)
        pause = self._last_wake + self._poll_interval - loop.time()
        if pause > 0:
            await asyncio.sleep(min(pause, max(deadline - loop.time(), 0.0)))
        while True:
            if await self._has_work():
                self._last_wake = loop.time()
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(self._poll_interval, remaining))

    async def _has_work(self) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            return bool(conn.execute(_HAS_WORK, (now, now)).fetchone()[0])

        return await self._store.read(run)

    async def heartbeat(self, job_id: str, token: str, lease_seconds: float) -> HeartbeatReply:
        """Extend the lease if ``token`` still owns the job."""

        def run(conn: sqlite3.Connection) -> HeartbeatReply:
            row = conn.execute(
                "UPDATE jobs SET lease_expires_at = ?"
                " WHERE job_id = ? AND token = ? AND status = 'running' RETURNING cancel_requested",
                (self._clock() + lease_seconds, _sql(job_id), _sql(token)),
            ).fetchone()
            if row is None:
                return HeartbeatReply(owned=False)
            return HeartbeatReply(owned=True, cancel_requested=bool(row[0]))

        return await self._store.transaction(run)

    async def progress(self, job_id: str, token: str, fraction: float, message: str | None) -> bool:
        """Record progress if ``token`` still owns the job."""

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE jobs SET progress = ?, progress_message = ?"
                " WHERE job_id = ? AND token = ? AND status = 'running'",
                (fraction, _opt(message), _sql(job_id), _sql(token)),
            )
            return cursor.rowcount == 1

        return await self._store.transaction(run)

    async def complete(
        self,
        job_id: str,
        token: str,
        result_json: str,
        *,
        result_ttl_seconds: float,
        on_success: JobSpec | None = None,
    ) -> bool:
        """Mark succeeded and enqueue ``on_success`` in the same transaction."""

        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cursor = conn.execute(
                "UPDATE jobs SET status = 'succeeded', result_json = ?, finished_at = ?,"
                " expires_at = ?, lease_expires_at = NULL"
                " WHERE job_id = ? AND token = ? AND status = 'running'",
                (_sql(result_json), now, now + result_ttl_seconds, _sql(job_id), _sql(token)),
            )
            if cursor.rowcount != 1:
                return False
            if on_success is not None:
                _insert(conn, on_success, now)
            return True

        return await self._store.transaction(run)

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
        """Retry after the delay while attempts are left, else dead plus ``on_failure``."""

        def run(conn: sqlite3.Connection) -> FailOutcome:
            now = self._clock()
            key, owner = _sql(job_id), _sql(token)
            row = conn.execute(
                "SELECT attempt, max_attempts FROM jobs"
                " WHERE job_id = ? AND token = ? AND status = 'running'",
                (key, owner),
            ).fetchone()
            if row is None:
                return "lost"
            attempt, max_attempts = row
            if retry_delay_seconds is not None and attempt < max_attempts:
                self._retry_later(conn, key, now + max(retry_delay_seconds, 0.0), error, traceback)
                return "retrying"
            self._bury(conn, key, now, dead_ttl_seconds, error, traceback)
            if on_failure is not None:
                _insert(conn, on_failure, now)
            return "dead"

        return await self._store.transaction(run)

    @staticmethod
    def _retry_later(
        conn: sqlite3.Connection, key: _SqlText, run_at: float, error: str, tb: str | None
    ) -> None:
        conn.execute(
            "UPDATE jobs SET status = 'retrying', run_at = ?, error = ?, traceback = ?,"
            " lease_expires_at = NULL WHERE job_id = ?",
            (run_at, _sql(error), _opt(tb), key),
        )

    @staticmethod
    def _bury(
        conn: sqlite3.Connection,
        key: _SqlText,
        now: float,
        ttl: float,
        error: str,
        tb: str | None,
    ) -> None:
        conn.execute(
            "UPDATE jobs SET status = 'dead', finished_at = ?, expires_at = ?, error = ?,"
            " traceback = ?, lease_expires_at = NULL WHERE job_id = ?",
            (now, now + ttl, _sql(error), _opt(tb), key),
        )

    async def release(self, job_id: str, token: str) -> bool:
        """Queue a running job again at once, giving back its attempt."""

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE jobs SET status = 'queued', attempt = max(attempt - 1, 0),"
                " lease_expires_at = NULL, token = NULL, worker_id = NULL, started_at = NULL"
                " WHERE job_id = ? AND token = ? AND status = 'running'",
                (_sql(job_id), _sql(token)),
            )
            return cursor.rowcount == 1

        return await self._store.transaction(run)

    async def reap(self, *, retry: RetryPolicy, dead_ttl_seconds: float, limit: int = 100) -> int:
        """Fail up to ``limit`` jobs whose lease expired ("lease expired")."""

        def run(conn: sqlite3.Connection) -> int:
            now = self._clock()
            self._prune(conn, now)
            rows = conn.execute(
                "SELECT job_id, attempt, max_attempts FROM jobs"
                " WHERE status = 'running' AND lease_expires_at < ?"
                " ORDER BY lease_expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
            for key, attempt, max_attempts in rows:
                if attempt < max_attempts:
                    run_at = now + _backoff(retry, attempt)
                    self._retry_later(conn, key, run_at, "lease expired", None)
                else:
                    self._bury(conn, key, now, dead_ttl_seconds, "lease expired", None)
            return len(rows)

        return await self._store.transaction(run)

    # --- inspection and administration ----------------------------------------------------

    async def get(self, job_id: str) -> JobInfo | None:
        """The job's record, or None when unknown or expired."""

        def run(conn: sqlite3.Connection) -> JobInfo | None:
            row = conn.execute(
                _SELECT_JOB,
                (_sql(job_id), self._clock()),
            ).fetchone()
            return None if row is None else _info(row)

        return await self._store.read(run)

    async def cancel(self, job_id: str, *, waiting_only: bool = False) -> bool:
        """Cancel a waiting job, or ask a running job's worker to stop (not
        with ``waiting_only``)."""

        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            key = _sql(job_id)
            cursor = conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ?"
                " WHERE job_id = ? AND status IN ('queued', 'scheduled', 'retrying')",
                (now, now + CANCELLED_TTL_SECONDS, key),
            )
            if cursor.rowcount == 1:
                return True
            if waiting_only:
                return False
            cursor = conn.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE job_id = ? AND status = 'running'",
                (key,),
            )
            return cursor.rowcount == 1

        return await self._store.transaction(run)

    async def list_dead(self, limit: int = 100, offset: int = 0) -> list[JobInfo]:
        """Dead jobs, most recent first."""

        def run(conn: sqlite3.Connection) -> list[JobInfo]:
            rows = conn.execute(
                _SELECT_DEAD,
                (self._clock(), max(limit, 0), max(offset, 0)),
            ).fetchall()
            return [_info(row) for row in rows]

        return await self._store.read(run)

    async def retry_dead(self, job_id: str | None = None) -> int:
        """Queue one dead job (or every one) again with a fresh set of attempts."""

        def run(conn: sqlite3.Connection) -> int:
            now = self._clock()
            sql = (
                "UPDATE jobs SET status = 'queued', attempt = 0, run_at = ?, started_at = NULL,"
                " finished_at = NULL, expires_at = NULL, token = NULL, worker_id = NULL,"
                " error = NULL, traceback = NULL, result_json = NULL, progress = NULL,"
                " progress_message = NULL, cancel_requested = 0"
                " WHERE status = 'dead' AND expires_at > ?"
            )
            if job_id is None:
                return conn.execute(sql, (now, now)).rowcount
            return conn.execute(sql + " AND job_id = ?", (now, now, _sql(job_id))).rowcount

        return await self._store.transaction(run)

    async def purge_dead(self, job_id: str | None = None) -> int:
        """Delete one dead job (or every one)."""

        def run(conn: sqlite3.Connection) -> int:
            sql = "DELETE FROM jobs WHERE status = 'dead' AND expires_at > ?"
            now = self._clock()
            if job_id is None:
                return conn.execute(sql, (now,)).rowcount
            return conn.execute(sql + " AND job_id = ?", (now, _sql(job_id))).rowcount

        return await self._store.transaction(run)

    async def status(self) -> dict[str, Any]:
        """Counts of queued jobs per priority, scheduled (and retrying), running and dead,
        and the age of the oldest job that could run now."""

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            queues = {p: 0 for p in PRIORITIES}
            counts = {"scheduled": 0, "running": 0, "dead": 0}
            for status, priority, count in conn.execute(
                "SELECT status, priority, COUNT(*) FROM jobs"
                " WHERE status IN ('queued', 'scheduled', 'retrying', 'running')"
                " GROUP BY status, priority"
            ):
                if status == "queued":
                    queues[priority] = count
                elif status == "running":
                    counts["running"] += count
                else:
                    counts["scheduled"] += count
            now = self._clock()
            counts["dead"] = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'dead' AND expires_at > ?", (now,)
            ).fetchone()[0]
            # Queued jobs, and scheduled or retrying ones already due: each has
            # been able to run since its run_at.
            (since,) = conn.execute(
                "SELECT MIN(run_at) FROM jobs"
                " WHERE status IN ('queued', 'scheduled', 'retrying') AND run_at <= ?",
                (now,),
            ).fetchone()
            oldest = 0.0 if since is None else max(0.0, now - since)
            return {"queues": queues, **counts, "oldest_waiting_seconds": oldest}

        return await self._store.read(run)

    async def register_worker(
        self, worker_id: str, info: Mapping[str, Any], ttl_seconds: float
    ) -> None:
        """Announce (or renew) a live worker for ``ttl_seconds``."""
        info_json = json.dumps(dict(info), default=str)

        def run(conn: sqlite3.Connection) -> None:
            now = self._clock()
            conn.execute("DELETE FROM job_workers WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO job_workers (worker_id, info_json, expires_at)"
                " VALUES (?, ?, ?)",
                (_sql(worker_id), _sql(info_json), now + ttl_seconds),
            )

        await self._store.transaction(run)

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker at shutdown."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM job_workers WHERE worker_id = ?", (_sql(worker_id),))

        await self._store.transaction(run)

    async def workers(self) -> list[dict[str, Any]]:
        """The live workers' info dicts, each with its ``worker_id``."""

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT worker_id, info_json FROM job_workers WHERE expires_at > ?"
                " ORDER BY worker_id",
                (self._clock(),),
            ).fetchall()
            result = []
            for worker_id, info_json in rows:
                info = _json(info_json)
                entry = dict(info) if isinstance(info, dict) else {}
                entry["worker_id"] = _text(worker_id)
                result.append(entry)
            return result

        return await self._store.read(run)

    # --- housekeeping ----------------------------------------------------------------------

    @staticmethod
    def _prune(conn: sqlite3.Connection, now: float) -> None:
        """Delete a bounded batch of expired finished jobs."""
        conn.execute(
            "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs"
            " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
            (now, _PRUNE_LIMIT),
        )
