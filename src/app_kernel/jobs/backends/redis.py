"""The job queue on Redis: one round trip per operation, on the server's clock.

Every state change is one Lua script (the ``_redis_jobs_*.lua`` files beside
this module, each run after the shared ``_redis_jobs_lib.lua``), so it is
atomic and needs no WATCH/MULTI retries. Scripts read ``TIME`` themselves: the
clocks of the calling hosts never matter. Reads that need no clock are single
commands.

Keys (``<base>`` is ``<prefix>jobs:{<namespace>}`` from
:class:`~app_kernel._redis.keys.RedisKeys`; every key of a namespace shares its
hash tag, so the scripts run unchanged on Redis Cluster. Scripts get ``<base>``
as ``KEYS[1]`` and build the other names from it, the BullMQ pattern)::

    <base>:job:<id>       hash  task, payload, priority, status, attempt, token, lease, ...
                                expires result/dead/cancelled TTL after the job finished
    <base>:q:high|normal|low  list  ready ids, FIFO (``release`` puts a job back in front)
    <base>:scheduled      zset  delayed and retrying ids, score = due time (ms)
    <base>:active         zset  running ids, score = lease deadline (ms)
    <base>:dead           zset  dead ids, score = expiry of the record (ms)
    <base>:wake           list  wake-up tokens for BLPOP, at most 100
    <base>:round          hash  picks taken per priority in the current weighted round
    <base>:workers        zset  worker ids, score = expiry (ms); expires with the last one
    <base>:worker:<id>    string  the worker's info as JSON, expires after its TTL

Choices the protocol leaves open:

* ``claim`` with ``weights`` keeps its round (picks taken per priority) in
  ``<base>:round``, so the weights hold across calls that take one job each. A
  round is high's block, then normal's, then low's; a block's unused picks pass
  to the next priority; a priority missing from ``weights`` weighs 0 (it only
  gets picks passed down to it, so ``high`` at 0 is never served). Strict
  order (``weights=None``, or all weights 0) is high, normal, low whatever the
  order of ``queues``.
* ``list_dead`` orders by the expiry of the dead record, which is the order of
  death when ``dead_ttl_seconds`` does not change between calls.
* ``cancel`` keeps the cancelled record for :data:`CANCELLED_TTL_SECONDS`.
* ``fail`` and ``reap`` ignore a pending cancel request (the worker decides what
  a cancelled handler amounts to); ``reap`` enqueues no ``on_failure`` job, as
  it has no spec for one.
* ``retry_dead`` keeps the last ``error`` and ``traceback`` for reference.
* ``wait_for_work`` holds one connection of the client's pool while it blocks
  (size ``max_connections`` for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import RedisError

from app_kernel._redis.lua import run_script
from app_kernel.errors import BackendUnavailable
from app_kernel.jobs.backends.base import (
    CANCELLED_TTL_SECONDS,
    PRIORITIES,
    Claimed,
    EnqueueOutcome,
    FailOutcome,
    HeartbeatReply,
    JobInfo,
    JobSpec,
    Priority,
    RetryPolicy,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.commands.core import AsyncScript

    from app_kernel._redis.keys import RedisKeys

__all__ = "RedisJobQueue"

_AREA = "jobs"
# retry_dead / purge_dead of every dead job work in batches of this size.
_DEAD_BATCH = 500
# Guard against a half-open connection: BLPOP gets this long past its timeout.
_WAIT_GRACE_SECONDS = 5.0


def _read(name: str) -> str:
    path = resources.files("app_kernel.jobs.backends").joinpath(f"_redis_jobs_{name}.lua")
    return path.read_text("utf-8")


# Read once at import, not on the event loop.
_LIB = _read("lib")
_SCRIPTS = {
    name: _LIB + _read(name)
    for name in (
        "enqueue",
        "claim",
        "heartbeat",
        "progress",
        "complete",
        "fail",
        "release",
        "reap",
        "cancel",
        "dead",
        "status",
        "workers",
    )
}


def _arg(value: str) -> bytes:
    """``value`` as bytes; lone surrogates survive the round trip."""
    return value.encode("utf-8", "surrogatepass")


def _opt(value: str | None) -> bytes:
    """An optional string as the scripts expect it: ``b""`` or ``b"=" + value``."""
    return b"" if value is None else b"=" + _arg(value)


def _num(value: float) -> bytes:
    return repr(float(value)).encode()


def _ms(seconds: float) -> int:
    """A positive duration in whole milliseconds, rounded up (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | str) -> str:
    """A reply as text, whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def _opt_text(value: bytes | str) -> str | None:
    text = _text(value)
    return text[1:] if text else None


def _spec_args(spec: JobSpec) -> list[bytes]:
    if spec.priority not in PRIORITIES:
        msg = f"Unknown priority {spec.priority!r}: expected one of {', '.join(PRIORITIES)}"
        raise ValueError(msg)
    return [
        _arg(spec.job_id),
        _arg(spec.task_name),
        _arg(spec.payload_json),
        spec.priority.encode(),
        _opt(spec.user_id),
        _num(spec.timeout_seconds),
        str(int(spec.max_attempts)).encode(),
        _num(max(0.0, spec.delay_seconds)),
        _arg(spec.metadata_json),
        _opt(spec.on_success),
        _opt(spec.on_failure),
    ]


def _callback_args(spec: JobSpec | None) -> list[bytes]:
    return [b"0"] if spec is None else [b"1", *_spec_args(spec)]


def _float(fields: Mapping[str, str], name: str) -> float | None:
    value = fields.get(name)
    return None if value is None else float(value)


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _info(job_id: str, fields: Mapping[str, str]) -> JobInfo:
    """A :class:`JobInfo` from a job hash (decoded)."""
    return JobInfo(
        job_id=job_id,
        task_name=fields["task"],
        status=fields["status"],  # type: ignore[arg-type]
        priority=fields["priority"],  # type: ignore[arg-type]
        attempt=int(fields["attempt"]),
        max_attempts=int(fields["max_attempts"]),
        payload=json.loads(fields["payload"]),
        user_id=fields.get("user"),
        metadata=json.loads(fields["metadata"]),
        enqueued_at=float(fields["enqueued_at"]),
        started_at=_float(fields, "started_at"),
        finished_at=_float(fields, "finished_at"),
        run_at=_float(fields, "run_at"),
        result=_json(fields.get("result")),
        error=fields.get("error"),
        traceback=fields.get("traceback"),
        progress=_float(fields, "progress"),
        progress_message=fields.get("progress_message"),
        worker_id=fields.get("worker"),
        extra={
            "timeout_seconds": float(fields["timeout"]),
            "on_success": fields.get("on_success"),
            "on_failure": fields.get("on_failure"),
            "cancel_requested": fields.get("cancel") == "1",
            "lease_expires_at": _float(fields, "lease"),
        },
    )


@contextlib.contextmanager
def _wrap_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        msg = f"Redis job queue: {operation} failed: {exc}"
        raise BackendUnavailable(msg) from exc


class RedisJobQueue:
    """:class:`~app_kernel.jobs.backends.base.JobQueue` on Redis.

    Args:
        redis: the kernel's ``redis.asyncio`` client.
        keys: builds every key under the kernel's prefix.
        namespace: the queue's name; it is the hash tag of all its keys.
    """

    def __init__(self, redis: Redis, keys: RedisKeys, *, namespace: str = "default") -> None:
        self._redis = redis
        self._keys = keys
        self.namespace = namespace
        self._base = keys.key(_AREA, namespace)
        self._wake_key = f"{self._base}:wake"
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(text) for name, text in _SCRIPTS.items()
        }
        # When the earliest scheduled job is due (event-loop clock), as the last claim saw it.
        self._next_due: float | None = None

    def key_prefix(self) -> str:
        """``<prefix>jobs:{<namespace>}``: every key of this queue starts with it."""
        return self._base

    def job_key(self, job_id: str) -> str:
        """The Redis key of a job's hash (for tests and operators)."""
        return self._keys.key(_AREA, self.namespace, "job", job_id)

    async def _run(self, name: str, args: Sequence[bytes | int | str]) -> Any:
        return await run_script(self._scripts[name], [self._base], args)

    # --- producing ---------------------------------------------------------------------

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[EnqueueOutcome]:
        """Write ``specs`` in order in one script call (see the protocol)."""
        if not specs:
            return []
        args = [arg for spec in specs for arg in _spec_args(spec)]
        with _wrap_errors("enqueue"):
            reply = await self._run("enqueue", args)
        return [
            EnqueueOutcome(
                job_id=spec.job_id,
                enqueued_at=float(_text(reply[2 * i])),
                deduplicated=int(reply[2 * i + 1]) == 1,
            )
            for i, spec in enumerate(specs)
        ]

    # --- consuming ---------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        limit: int,
        *,
        lease_seconds: float,
        queues: Sequence[Priority] = PRIORITIES,
        weights: Mapping[Priority, int] | None = None,
    ) -> list[Claimed]:
        """Promote due jobs and take up to ``limit`` ready ones in one script call."""
        if limit <= 0 or not queues:
            return []
        weight = [0 if weights is None else int(weights.get(p, 0)) for p in PRIORITIES]
        if any(w < 0 for w in weight):
            msg = f"Weights must not be negative, got {dict(weights or {})!r}"
            raise ValueError(msg)
        strict = sum(weight) == 0
        args: list[bytes | int | str] = [
            _arg(worker_id),
            int(limit),
            _ms(lease_seconds),
            os.urandom(12).hex(),
            "".join("1" if p in queues else "0" for p in PRIORITIES),
            "1" if strict else "0",
            *weight,
        ]
        with _wrap_errors("claim"):
            reply = await self._run("claim", args)
        next_due = _text(reply[0])
        loop = asyncio.get_running_loop()
        self._next_due = loop.time() + float(next_due) / 1000 if next_due else None
        fields = [_text(item) for item in reply[1:]]
        return [
            Claimed(
                job_id=fields[i],
                task_name=fields[i + 1],
                payload_json=fields[i + 2],
                priority=cast("Priority", fields[i + 3]),
                attempt=int(fields[i + 4]),
                max_attempts=int(fields[i + 5]),
                timeout_seconds=float(fields[i + 6]),
                user_id=_opt_text(fields[i + 7]),
                metadata_json=fields[i + 8],
                enqueued_at=float(fields[i + 9]),
                token=fields[i + 10],
                on_success=_opt_text(fields[i + 11]),
                on_failure=_opt_text(fields[i + 12]),
            )
            for i in range(0, len(fields), 13)
        ]

    async def wait_for_work(self, timeout_seconds: float) -> None:
        """Block on the wake-up list until a job may be ready, or ``timeout_seconds``.

        The wait ends early when the earliest scheduled job the last ``claim``
        saw falls due. BLPOP runs on a connection of its own from the client's
        pool, read without the pool's socket timeout (the server ends the wait).
        """
        timeout = timeout_seconds
        if self._next_due is not None:
            timeout = min(timeout, self._next_due - asyncio.get_running_loop().time())
            self._next_due = None
        if timeout <= 0:
            return
        # Redis reads the timeout with millisecond resolution; 0 would mean forever.
        block = max(0.001, round(timeout, 3))
        pool = self._redis.connection_pool
        # Typed here: some redis-py versions leave get_connection unannotated.
        get_connection: Callable[[], Awaitable[AbstractConnection]] = pool.get_connection
        with _wrap_errors("wait_for_work"):
            connection = await get_connection()
            try:
                await connection.send_command("BLPOP", self._wake_key, block)
                # A read cut short (the grace below, or cancellation) disconnects
                # the connection, so no stale reply goes back to the pool.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(block + _WAIT_GRACE_SECONDS):
                        await connection.read_response(timeout=math.inf)
            finally:
                await pool.release(connection)

    async def heartbeat(self, job_id: str, token: str, lease_seconds: float) -> HeartbeatReply:
        """Extend the lease if ``token`` owns the job; relays a cancel request."""
        with _wrap_errors("heartbeat"):
            owned, cancel = await self._run(
                "heartbeat", [_arg(job_id), _arg(token), _ms(lease_seconds)]
            )
        return HeartbeatReply(owned=int(owned) == 1, cancel_requested=int(cancel) == 1)

    async def progress(self, job_id: str, token: str, fraction: float, message: str | None) -> bool:
        """Record progress (clamped to 0.0 to 1.0) if ``token`` owns the job."""
        fraction = min(1.0, max(0.0, fraction))
        with _wrap_errors("progress"):
            done = await self._run(
                "progress", [_arg(job_id), _arg(token), _num(fraction), _opt(message)]
            )
        return int(done) == 1

    async def complete(
        self,
        job_id: str,
        token: str,
        result_json: str,
        *,
        result_ttl_seconds: float,
        on_success: JobSpec | None = None,
    ) -> bool:
        """Mark succeeded (and enqueue ``on_success``) if ``token`` owns the job."""
        args: list[bytes | int] = [
            _arg(job_id),
            _arg(token),
            _arg(result_json),
            _ms(result_ttl_seconds),
            *_callback_args(on_success),
        ]
        with _wrap_errors("complete"):
            done = await self._run("complete", args)
        return int(done) == 1

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
        """Record a failed attempt: ``retrying``, ``dead`` or ``lost`` (see the protocol)."""
        delay = b"" if retry_delay_seconds is None else _num(max(0.0, retry_delay_seconds))
        args: list[bytes | int] = [
            _arg(job_id),
            _arg(token),
            _arg(error),
            _opt(traceback),
            delay,
            _ms(dead_ttl_seconds),
            *_callback_args(on_failure),
        ]
        with _wrap_errors("fail"):
            outcome = _text(await self._run("fail", args))
        return cast("FailOutcome", outcome)

    async def release(self, job_id: str, token: str) -> bool:
        """Put a running job back in front of its queue, attempt not spent."""
        with _wrap_errors("release"):
            done = await self._run("release", [_arg(job_id), _arg(token)])
        return int(done) == 1

    async def reap(self, *, retry: RetryPolicy, dead_ttl_seconds: float, limit: int = 100) -> int:
        """Fail up to ``limit`` expired leases ("lease expired"), with backoff and jitter."""
        if limit <= 0:
            return 0
        jitter = [repr(random.random()).encode() for _ in range(limit)]  # noqa: S311
        args: list[bytes | int] = [
            _ms(dead_ttl_seconds),
            int(limit),
            _num(retry.base_seconds),
            _num(retry.cap_seconds),
            _num(retry.min_delay_seconds),
            *jitter,
        ]
        with _wrap_errors("reap"):
            return int(await self._run("reap", args))

    # --- inspecting and managing -------------------------------------------------------

    async def get(self, job_id: str) -> JobInfo | None:
        """The job's record (one HGETALL), or None when unknown or expired."""
        with _wrap_errors("get"):
            record = await self._redis.hgetall(self.job_key(job_id))
        if not record:
            return None
        return _info(job_id, {_text(k): _text(v) for k, v in record.items()})

    async def cancel(self, job_id: str, *, waiting_only: bool = False) -> bool:
        """Cancel a waiting job, or ask a running one to stop (see the protocol)."""
        with _wrap_errors("cancel"):
            args = (_arg(job_id), _ms(CANCELLED_TTL_SECONDS), 1 if waiting_only else 0)
            done = await self._run("cancel", args)
        return int(done) == 1

    async def list_dead(self, limit: int = 100, offset: int = 0) -> list[JobInfo]:
        """Dead jobs, most recent first (one script call)."""
        if limit <= 0:
            return []
        with _wrap_errors("list_dead"):
            reply = await self._run("dead", ["list", b"", max(0, offset), limit])
        items = [_text(item) for item in reply]
        jobs: list[JobInfo] = []
        start = 0
        while start < len(items):
            end = items.index("", start)
            job_id, flat = items[start], items[start + 1 : end]
            jobs.append(_info(job_id, dict(zip(flat[::2], flat[1::2], strict=True))))
            start = end + 1
        return jobs

    async def _dead_action(self, action: str, job_id: str | None) -> int:
        total = 0
        with _wrap_errors(f"{action}_dead"):
            while True:
                one = b"" if job_id is None else _arg(job_id)
                done, more = await self._run("dead", [action, one, 0, _DEAD_BATCH])
                total += int(done)
                if not int(more):
                    return total

    async def retry_dead(self, job_id: str | None = None) -> int:
        """Requeue one dead job (or all, oldest first) with a fresh set of attempts."""
        return await self._dead_action("retry", job_id)

    async def purge_dead(self, job_id: str | None = None) -> int:
        """Delete one dead job (or all)."""
        return await self._dead_action("purge", job_id)

    async def status(self) -> dict[str, Any]:
        """Queue depths and the oldest waiting job's age (one script call)."""
        with _wrap_errors("status"):
            reply = await self._run("status", [])
        high, normal, low, scheduled, running, dead, oldest = reply
        return {
            "queues": {"high": int(high), "normal": int(normal), "low": int(low)},
            "scheduled": int(scheduled),
            "running": int(running),
            "dead": int(dead),
            "oldest_waiting_seconds": max(0.0, float(_text(oldest))),
        }

    # --- workers -----------------------------------------------------------------------

    async def register_worker(
        self, worker_id: str, info: Mapping[str, Any], ttl_seconds: float
    ) -> None:
        """Announce (or renew) a live worker for ``ttl_seconds``."""
        text = json.dumps({**info, "worker_id": worker_id}, default=str)
        with _wrap_errors("register_worker"):
            await self._run("workers", ["register", _arg(worker_id), _arg(text), _ms(ttl_seconds)])

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker at shutdown."""
        with _wrap_errors("unregister_worker"):
            await self._run("workers", ["unregister", _arg(worker_id), b"", 0])

    async def workers(self) -> list[dict[str, Any]]:
        """The live workers' info dicts (with ``worker_id``)."""
        with _wrap_errors("workers"):
            reply = await self._run("workers", ["list", b"", b"", 0])
        return [json.loads(_text(item)) for item in reply]
