"""The worker end to end in one process: enqueue, run, retry, dead, timeout, cancel, drain.

Each test builds a kernel on the embedded SQLite file (and on Redis where the
``coordination_url`` matrix is used), runs a :class:`WorkerManager` as a task
and stops it at the end. Leases are short so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app_kernel import KernelSettings
from app_kernel.jobs import (
    JobContext,
    JobInfo,
    JobRegistry,
    PermanentError,
    Retry,
    WorkerManager,
)
from app_kernel.kernel import Kernel
from app_kernel.settings import JobSettings, RedisSettings

FAST = {
    "lease_seconds": 1.0,
    "heartbeat_seconds": 0.3,
    "reap_interval_seconds": 0.3,
    "retry_backoff_base_seconds": 0.05,
    "retry_backoff_cap_seconds": 0.1,
    "shutdown_grace_seconds": 2.0,
    "worker_count": 4,
}


def make_settings(
    tmp_path: Path, coordination_url: str | None, prefix: str | None, **jobs: Any
) -> KernelSettings:
    redis = RedisSettings(url=coordination_url, key_prefix=prefix or "app_kernel:")
    return KernelSettings(
        debug=True, data_dir=str(tmp_path), jobs=JobSettings(**{**FAST, **jobs}), redis=redis
    )


class Harness:
    """A kernel plus workers started as tasks; everything stops at teardown."""

    def __init__(self, settings: KernelSettings, registry: JobRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.kernel = Kernel(settings, registry)
        self.workers: list[tuple[WorkerManager, asyncio.Task[None]]] = []

    @property
    def client(self) -> Any:
        return self.kernel.jobs

    async def start_worker(self, **options: Any) -> WorkerManager:
        manager = WorkerManager(self.kernel, handle_signals=False, **options)
        task = asyncio.create_task(manager.start())
        self.workers.append((manager, task))
        while not manager.is_running or manager.started_at is None:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return manager

    async def wait_for(
        self, job_id: str, predicate: Callable[[JobInfo], bool], within: float = 10.0
    ) -> JobInfo:
        deadline = time.monotonic() + within
        info: JobInfo | None = None
        while time.monotonic() < deadline:
            info = await self.client.get_job(job_id)
            if info is not None and predicate(info):
                return info
            await asyncio.sleep(0.02)
        pytest.fail(f"job {job_id} never matched; last seen: {info}")

    async def finished(self, job_id: str, within: float = 10.0) -> JobInfo:
        return await self.wait_for(
            job_id, lambda i: i.status in ("succeeded", "dead", "cancelled"), within
        )

    async def aclose(self) -> None:
        for manager, task in self.workers:
            await manager.stop()
            await task
        await self.kernel.close()


@pytest.fixture
def registry() -> JobRegistry:
    return JobRegistry()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest, coordination_url: str | None) -> str | None:
    if coordination_url is None:
        return None
    prefix: str = request.getfixturevalue("redis_key_prefix")
    return prefix


@pytest.fixture
def built_harness(
    tmp_path: Path, coordination_url: str | None, redis_prefix: str | None, registry: JobRegistry
) -> Harness:
    """Built in a sync fixture: constructing a kernel is blocking work."""
    return Harness(make_settings(tmp_path, coordination_url, redis_prefix), registry)


@pytest.fixture
async def harness(built_harness: Harness) -> AsyncIterator[Harness]:
    await built_harness.kernel.open()
    try:
        yield built_harness
    finally:
        await built_harness.aclose()


@pytest.fixture
def built_sqlite_harness(tmp_path: Path, registry: JobRegistry) -> Harness:
    return Harness(make_settings(tmp_path, None, None), registry)


@pytest.fixture
async def sqlite_harness(built_sqlite_harness: Harness) -> AsyncIterator[Harness]:
    await built_sqlite_harness.kernel.open()
    try:
        yield built_sqlite_harness
    finally:
        await built_sqlite_harness.aclose()


# --- the happy path and retries ------------------------------------------------------------


async def test_enqueued_job_runs_and_stores_its_result(
    harness: Harness, registry: JobRegistry
) -> None:
    seen: list[JobContext] = []

    @registry.task("add")
    async def add(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx)
        await ctx.progress(0.5, "half way")
        ctx.log.info("adding")
        return {"sum": payload["a"] + payload["b"]}

    await harness.start_worker()
    result = await harness.client.enqueue(
        "add", {"a": 1, "b": 2}, user_id="u1", metadata={"trace": "t"}
    )
    info = await harness.finished(result.job_id)
    assert info.status == "succeeded"
    assert info.result == {"sum": 3}
    assert info.attempt == 1
    (ctx,) = seen
    assert (ctx.job_id, ctx.task_name, ctx.attempt, ctx.user_id) == (result.job_id, "add", 1, "u1")
    assert ctx.metadata == {"trace": "t"}
    assert ctx.max_attempts == 3
    assert not ctx.cancelled


async def test_failing_handler_is_retried_then_succeeds(
    harness: Harness, registry: JobRegistry
) -> None:
    attempts: list[int] = []

    @registry.task("flaky")
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"boom {ctx.attempt}")
        return "ok"

    await harness.start_worker()
    result = await harness.client.enqueue("flaky", {}, max_attempts=3)
    info = await harness.finished(result.job_id)
    assert info.status == "succeeded"
    assert info.result == "ok"
    assert attempts == [1, 2, 3]


async def test_job_goes_dead_with_traceback_after_max_attempts(
    harness: Harness, registry: JobRegistry
) -> None:
    runs: list[int] = []
    registry.register("always_fails", _always_fails(runs), max_attempts=2)
    await harness.start_worker()
    result = await harness.client.enqueue("always_fails", {"n": 1})
    info = await harness.finished(result.job_id)
    assert info.status == "dead"
    assert info.attempt == 2
    assert runs == [1, 2]
    assert info.error is not None
    assert "ValueError: nope" in info.error
    assert info.traceback is not None
    assert "Traceback" in info.traceback
    assert "_always_fails" in info.traceback or "fails" in info.traceback
    dead = await harness.client.list_dead()
    assert [d.job_id for d in dead] == [result.job_id]
    status = await harness.client.get_queue_status()
    assert status["dead"] == 1


def _always_fails(runs: list[int]) -> Callable[[dict[str, Any], JobContext], Any]:
    async def fails(payload: dict[str, Any], ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        raise ValueError("nope")

    return fails


async def test_retry_exception_and_permanent_error(harness: Harness, registry: JobRegistry) -> None:
    retry_runs: list[float] = []

    @registry.task("asks_retry")
    async def asks_retry(payload: dict[str, Any], ctx: JobContext) -> str:
        retry_runs.append(time.monotonic())
        if ctx.attempt == 1:
            raise Retry(0.4)
        return "second time lucky"

    @registry.task("permanent")
    async def permanent(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError("bad input")

    await harness.start_worker()
    retried = await harness.client.enqueue("asks_retry", {})
    doomed = await harness.client.enqueue("permanent", {}, max_attempts=5)
    info = await harness.finished(retried.job_id)
    assert info.status == "succeeded"
    assert len(retry_runs) == 2
    assert retry_runs[1] - retry_runs[0] >= 0.35
    dead = await harness.finished(doomed.job_id)
    assert dead.status == "dead"
    assert dead.attempt == 1
    assert "PermanentError: bad input" in (dead.error or "")


# --- timeouts, threads and hostile handlers -------------------------------------------------


async def test_timeout_cancels_an_async_handler(harness: Harness, registry: JobRegistry) -> None:
    cancelled = asyncio.Event()

    @registry.task("slow", max_attempts=1)
    async def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await harness.start_worker()
    result = await harness.client.enqueue("slow", {}, timeout=0.3)
    info = await harness.finished(result.job_id)
    assert info.status == "dead"
    assert "timeout of 0.3s" in (info.error or "")
    assert cancelled.is_set()


async def test_sync_handler_runs_in_a_thread_and_times_out_by_abandoning_it(
    sqlite_harness: Harness, registry: JobRegistry
) -> None:
    threads: list[str] = []

    @registry.task("sync_add")
    def sync_add(payload: dict[str, Any], ctx: JobContext) -> int:
        threads.append(threading.current_thread().name)
        return int(payload["a"]) + 1

    @registry.task("sync_slow", max_attempts=1)
    def sync_slow(payload: dict[str, Any], ctx: JobContext) -> None:
        time.sleep(0.6)

    worker = await sqlite_harness.start_worker()
    ok = await sqlite_harness.client.enqueue("sync_add", {"a": 41})
    slow = await sqlite_harness.client.enqueue("sync_slow", {}, timeout=0.2)
    assert (await sqlite_harness.finished(ok.job_id)).result == 42
    assert threads
    assert threads[0].startswith("app_kernel-job")
    assert threads[0] != threading.current_thread().name
    info = await sqlite_harness.finished(slow.job_id)
    assert info.status == "dead"
    assert "timeout" in (info.error or "")
    assert worker.abandoned_threads == 1


async def test_unknown_task_at_the_worker_is_dead_and_the_worker_lives(
    harness: Harness, registry: JobRegistry
) -> None:
    @registry.task("fine")
    async def fine(payload: dict[str, Any], ctx: JobContext) -> str:
        return "fine"

    worker = await harness.start_worker()
    # A client that knows no registry (a producer-only process) accepts any name.
    from app_kernel.jobs import JobClient

    producer = JobClient(harness.kernel.job_queue, harness.settings.jobs)
    unknown = await producer.enqueue("not_registered", {})
    info = await harness.finished(unknown.job_id)
    assert info.status == "dead"
    assert info.attempt == 1
    assert "unknown task 'not_registered'" in (info.error or "")
    after = await harness.client.enqueue("fine", {})
    assert (await harness.finished(after.job_id)).status == "succeeded"
    assert worker.is_running


async def test_sys_exit_and_keyboard_interrupt_fail_the_attempt_only(
    harness: Harness, registry: JobRegistry
) -> None:
    @registry.task("exits", max_attempts=1)
    async def exits(payload: dict[str, Any], ctx: JobContext) -> None:
        sys.exit(3)

    @registry.task("interrupts", max_attempts=1)
    def interrupts(payload: dict[str, Any], ctx: JobContext) -> None:
        raise KeyboardInterrupt

    @registry.task("unserialisable", max_attempts=1)
    async def unserialisable(payload: dict[str, Any], ctx: JobContext) -> object:
        return object()

    worker = await harness.start_worker()
    a = await harness.client.enqueue("exits", {})
    b = await harness.client.enqueue("interrupts", {})
    c = await harness.client.enqueue("unserialisable", {})
    for job, text in ((a, "SystemExit"), (b, "KeyboardInterrupt"), (c, "not JSON-serialisable")):
        info = await harness.finished(job.job_id)
        assert info.status == "dead"
        assert text in (info.error or "")
    assert worker.is_running


async def test_lone_surrogates_in_payload_result_and_error_come_back_unchanged(
    harness: Harness, registry: JobRegistry
) -> None:
    """Text with a lone surrogate (``json.loads`` makes it from ``"\\ud800"``) has
    no UTF-8 form; the stores keep it anyway, so the job runs as enqueued."""
    seen: list[dict[str, Any]] = []

    @registry.task("echo", max_attempts=1)
    async def echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        seen.append(payload)
        return payload

    @registry.task("complains", max_attempts=1)
    async def complains(payload: dict[str, Any], ctx: JobContext) -> None:
        raise ValueError("broken \udfff input")

    worker = await harness.start_worker()
    payload = {"text": "a\ud800b", "\udfff": 1}
    echoed = await harness.client.enqueue("echo", payload)
    failed = await harness.client.enqueue("complains", {})
    info = await harness.finished(echoed.job_id)
    assert (info.status, info.result, seen) == ("succeeded", payload, [payload])
    info = await harness.finished(failed.job_id)
    assert info.status == "dead"
    assert "broken \udfff input" in (info.error or "")
    assert worker.is_running


# --- callbacks, priorities, delays, cancellation ------------------------------------------


async def test_on_success_and_on_failure_follow_up_jobs_run(
    harness: Harness, registry: JobRegistry
) -> None:
    follow_ups: dict[str, dict[str, Any]] = {}
    done = asyncio.Event()

    @registry.task("work", max_attempts=1)
    async def work(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        if payload.get("fail"):
            raise RuntimeError("broken")
        return {"value": payload["value"]}

    @registry.task("celebrate")
    async def celebrate(payload: dict[str, Any], ctx: JobContext) -> None:
        follow_ups["success"] = payload
        if len(follow_ups) == 2:
            done.set()

    @registry.task("mourn")
    async def mourn(payload: dict[str, Any], ctx: JobContext) -> None:
        follow_ups["failure"] = payload
        if len(follow_ups) == 2:
            done.set()

    await harness.start_worker()
    good = await harness.client.enqueue(
        "work", {"value": 7}, on_success="celebrate", on_failure="mourn"
    )
    bad = await harness.client.enqueue(
        "work", {"fail": True}, on_success="celebrate", on_failure="mourn"
    )
    await asyncio.wait_for(done.wait(), 10)
    assert follow_ups["success"] == {
        "job_id": good.job_id,
        "result": {"value": 7},
        "payload": {"value": 7},
    }
    failure = follow_ups["failure"]
    assert failure["job_id"] == bad.job_id
    assert failure["payload"] == {"fail": True}
    assert "RuntimeError: broken" in failure["error"]


async def test_priorities_run_high_first_with_concurrency_one(
    harness: Harness, registry: JobRegistry
) -> None:
    order: list[str] = []
    all_ran = asyncio.Event()

    @registry.task("record")
    async def record(payload: dict[str, Any], ctx: JobContext) -> None:
        order.append(payload["name"])
        if len(order) == 6:
            all_ran.set()

    for name in ("L1", "L2", "L3"):
        await harness.client.enqueue("record", {"name": name}, priority="low")
    for name in ("H1", "H2", "H3"):
        await harness.client.enqueue("record", {"name": name}, priority="high")
    await harness.start_worker(concurrency=1)
    await asyncio.wait_for(all_ran.wait(), 10)
    assert order == ["H1", "H2", "H3", "L1", "L2", "L3"]


async def test_delay_seconds_is_respected(harness: Harness, registry: JobRegistry) -> None:
    ran_at: list[float] = []

    @registry.task("later")
    async def later(payload: dict[str, Any], ctx: JobContext) -> None:
        ran_at.append(time.time())

    await harness.start_worker()
    result = await harness.client.enqueue("later", {}, delay_seconds=0.6)
    assert (await harness.client.get_job(result.job_id)).status == "scheduled"
    info = await harness.finished(result.job_id)
    assert info.status == "succeeded"
    assert ran_at[0] - result.enqueued_at >= 0.55


async def test_cancel_queued_and_running_jobs(harness: Harness, registry: JobRegistry) -> None:
    started = asyncio.Event()
    saw_cancel: list[bool] = []

    @registry.task("long")
    async def long(payload: dict[str, Any], ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            saw_cancel.append(ctx.cancelled)

    queued = await harness.client.enqueue("long", {}, delay_seconds=30)
    assert await harness.client.cancel(queued.job_id)
    assert (await harness.client.get_job(queued.job_id)).status == "cancelled"

    await harness.start_worker()
    running = await harness.client.enqueue("long", {})
    await asyncio.wait_for(started.wait(), 10)
    assert await harness.client.cancel(running.job_id)
    info = await harness.finished(running.job_id, within=5)
    assert info.status in ("dead", "cancelled")
    assert saw_cancel == [True]
    assert not await harness.client.cancel(running.job_id)


# --- shutdown and heartbeats ----------------------------------------------------------------


async def test_graceful_stop_releases_a_running_job_without_spending_an_attempt(
    tmp_path: Path, coordination_url: str | None, redis_prefix: str | None, registry: JobRegistry
) -> None:
    started = asyncio.Event()
    runs: list[int] = []

    @registry.task("stubborn")
    async def stubborn(payload: dict[str, Any], ctx: JobContext) -> str:
        runs.append(ctx.attempt)
        started.set()
        if len(runs) == 1:
            await asyncio.sleep(30)
        return f"attempt {ctx.attempt}"

    settings = make_settings(tmp_path, coordination_url, redis_prefix, shutdown_grace_seconds=0.3)
    h = Harness(settings, registry)
    await h.kernel.open()
    try:
        worker = await h.start_worker()
        job = await h.client.enqueue("stubborn", {"hold": True})
        await asyncio.wait_for(started.wait(), 10)
        stop_began = time.monotonic()
        await worker.stop()
        assert time.monotonic() - stop_began < 3
        info = await h.client.get_job(job.job_id)
        assert info is not None
        assert info.status == "queued"
        assert info.attempt == 0
        status = await h.client.get_queue_status()
        assert status["workers"] == []
        await h.start_worker()
        done = await h.finished(job.job_id)
        assert done.status == "succeeded"
        assert done.attempt == 1
        assert done.result == "attempt 1"
        assert runs == [1, 1]
    finally:
        await h.aclose()


async def test_worker_is_listed_in_queue_status(harness: Harness) -> None:
    worker = await harness.start_worker(concurrency=2, queues=["high", "normal"])
    status = await harness.client.get_queue_status()
    assert set(status) >= {"queues", "scheduled", "running", "dead", "workers"}
    (listed,) = status["workers"]
    assert listed["worker_id"] == worker.worker_id
    assert listed["concurrency"] == 2
    assert listed["queues"] == ["high", "normal"]
    assert listed["pid"] > 0


@pytest.mark.allow_slow_callbacks
async def test_blocking_async_handler_keeps_its_lease_and_runs_once(
    tmp_path: Path, registry: JobRegistry
) -> None:
    """``time.sleep`` inside ``async def`` blocks the loop; the heartbeat thread keeps the lease,
    so a second worker (own thread, own loop) never reaps and reruns the job."""
    runs: list[int] = []

    @registry.task("blocker")
    async def blocker(payload: dict[str, Any], ctx: JobContext) -> str:
        runs.append(ctx.attempt)
        time.sleep(1.2)  # noqa: ASYNC251 - the point of the test
        return "done"

    settings = make_settings(
        tmp_path, None, None, lease_seconds=0.6, heartbeat_seconds=0.2, reap_interval_seconds=0.1
    )
    h = Harness(settings, registry)
    await h.kernel.open()
    other_kernel = Kernel(settings, registry)
    other = WorkerManager(other_kernel, handle_signals=False)
    other_thread = threading.Thread(target=lambda: asyncio.run(other.start()), daemon=True)
    try:
        other_thread.start()
        await h.start_worker(concurrency=1)
        job = await h.client.enqueue("blocker", {}, priority="high")
        info = await h.finished(job.job_id)
        await asyncio.sleep(1.0)  # time for a wrong reap-and-rerun to show
        assert info.status == "succeeded"
        assert runs == [1]
        assert (await h.client.get_job(job.job_id)).attempt == 1  # type: ignore[union-attr]
    finally:
        other.request_stop()
        await asyncio.to_thread(other_thread.join, 10)
        await h.aclose()
