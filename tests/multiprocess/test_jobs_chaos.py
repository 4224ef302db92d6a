"""Job queue faults: a worker SIGKILLed at each state transition, Redis restarted under
load, and 1,000 jobs across 3 worker processes.

Workers are real ``python`` processes (``tests/_jobs_chaos_app.py``) on the same
coordination backend as the test. Kills come from the failpoints of
:mod:`app_kernel.jobs.failpoints` (``APP_KERNEL_FAILPOINTS``), so each one lands
exactly at the transition under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from _services import free_port
from app_kernel import KernelSettings
from app_kernel.errors import BackendUnavailable
from app_kernel.jobs import JobRegistry
from app_kernel.jobs.failpoints import ENV_VAR, failpoint, load_failpoints, parse_failpoints
from app_kernel.kernel import Kernel
from app_kernel.settings import JobSettings, RedisSettings

# The work runs in the worker processes. In this one, ``Kernel.open`` (SQLAlchemy
# compiling the schema's DDL) can take just over the loop guard's 0.1 s on a busy
# 2-core machine, which says nothing about the code under test.
pytestmark = [pytest.mark.multiprocess, pytest.mark.allow_slow_callbacks]

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
APP = TESTS / "_jobs_chaos_app.py"
REDIS_SERVER = "/usr/bin/redis-server"

JOBS: dict[str, Any] = {
    "lease_seconds": 1.0,
    "heartbeat_seconds": 0.3,
    "reap_interval_seconds": 0.3,
    "retry_backoff_base_seconds": 0.05,
    "retry_backoff_cap_seconds": 0.1,
    "shutdown_grace_seconds": 0.5,
    "worker_count": 4,
}


def _settings(data_dir: Path, redis_url: str | None, prefix: str) -> KernelSettings:
    return KernelSettings(
        debug=True,
        data_dir=str(data_dir),
        redis=RedisSettings(url=redis_url, key_prefix=prefix),
        jobs=JobSettings(**JOBS),
    )


async def _never_here(payload: dict[str, Any], ctx: Any) -> None:
    raise AssertionError("the test process runs no jobs")


def _kernel(data_dir: Path, redis_url: str | None, prefix: str) -> Kernel:
    registry = JobRegistry()
    registry.register("chaos", _never_here)
    return Kernel(_settings(data_dir, redis_url, prefix), registry)


@pytest.fixture
def prefix(request: pytest.FixtureRequest, coordination_url: str | None) -> str:
    if coordination_url is None:
        return "app_kernel:"
    value: str = request.getfixturevalue("redis_key_prefix")
    return value


@pytest.fixture
async def kernel(
    tmp_path: Path, coordination_url: str | None, prefix: str
) -> AsyncIterator[Kernel]:
    built = _kernel(tmp_path, coordination_url, prefix)
    await built.open()
    try:
        yield built
    finally:
        await built.close()


class Worker:
    """One worker process of ``_jobs_chaos_app.py``; its log is ``worker-<pid>.log``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def spawn(
        cls,
        tmp_path: Path,
        redis_url: str | None,
        prefix: str,
        *,
        hold: float = 0.0,
        failpoints: str | None = None,
        concurrency: int | None = None,
    ) -> Worker:
        config = {
            "data_dir": str(tmp_path),
            "redis_url": redis_url,
            "prefix": prefix,
            "hold": hold,
            "runs": str(tmp_path / "runs.txt"),
            "concurrency": concurrency,
            "jobs": JOBS,
        }
        env = {**os.environ, "PYTHONPATH": str(SRC), "CHAOS_CONFIG": json.dumps(config)}
        env.pop(ENV_VAR, None)
        if failpoints:
            env[ENV_VAR] = failpoints
        log = tmp_path / f"worker-{time.monotonic_ns()}.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(APP),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", (line, log.read_text(errors="replace")[-2000:])
        return cls(proc)

    async def died_of_sigkill(self, within: float) -> None:
        code = await asyncio.wait_for(self.proc.wait(), within)
        assert code == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def _wait(predicate: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _runs(tmp_path: Path, kind: str) -> list[tuple[str, int, int]]:
    """``(job_id, attempt, pid)`` of each ``start`` or ``done`` line of the runs file."""
    path = tmp_path / "runs.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(job_id, int(attempt), int(pid)) for k, job_id, attempt, pid in rows if k == kind]


async def _succeeded(kernel: Kernel, job_ids: list[str]) -> bool:
    for job_id in job_ids:
        info = await kernel.jobs.get_job(job_id)
        if info is None or info.status != "succeeded":
            return False
    return True


# --- 1. a SIGKILL at each state transition -------------------------------------------


def test_failpoint_spec() -> None:
    """``name`` or ``name:N``, comma-separated; typos and bad counts are refused."""
    assert parse_failpoints("") == {}
    assert parse_failpoints(" after_claim , before_ack:3,") == {"after_claim": 1, "before_ack": 3}
    for bad in ("after_clam", "before_ack:0", "before_ack:x", "before_fail:-1"):
        with pytest.raises(ValueError, match=ENV_VAR):
            parse_failpoints(bad)
    load_failpoints({})  # nothing armed: every failpoint is a no-op
    for name in ("after_claim", "after_heartbeat", "before_ack", "before_fail"):
        failpoint(name)


# failpoint -> (payload, hold in the doomed worker, (attempt, pid-is-doomed) of its
# start/done lines)
SCENARIOS: dict[str, tuple[dict[str, Any], float, list[int], list[int]]] = {
    # killed before the handler starts: the doomed worker never ran it
    "after_claim": ({}, 0.0, [], []),
    # killed mid-run, right after a lease renewal
    "after_heartbeat": ({}, 5.0, [1], []),
    # the handler returned but the result was never recorded: it runs again
    "before_ack": ({}, 0.0, [1], [1]),
    # the first attempt failed but the failure was never recorded
    "before_fail": ({"fail_first": True}, 0.0, [1], []),
}


@pytest.mark.parametrize("point", sorted(SCENARIOS))
async def test_worker_killed_at_a_failpoint_loses_no_job(
    kernel: Kernel, tmp_path: Path, coordination_url: str | None, prefix: str, point: str
) -> None:
    """A worker SIGKILLed at ``point`` leaves the job to a clean worker, which completes
    it with the crashed attempt counted (attempt 2); at-least-once, never lost."""
    payload, hold, doomed_starts, doomed_dones = SCENARIOS[point]
    job_id = (await kernel.jobs.enqueue("chaos", payload)).job_id
    doomed = await Worker.spawn(tmp_path, coordination_url, prefix, hold=hold, failpoints=point)
    try:
        await doomed.died_of_sigkill(20)
    finally:
        await doomed.stop()
    info = await kernel.jobs.get_job(job_id)
    assert info is not None
    assert info.status in {"running", "retrying", "queued"}  # no result was recorded
    rescuer = await Worker.spawn(tmp_path, coordination_url, prefix)
    try:
        await _wait(lambda: _succeeded(kernel, [job_id]), 20, "the job to succeed")
    finally:
        await rescuer.stop()
    info = await kernel.jobs.get_job(job_id)
    assert info is not None
    assert info.attempt == 2
    assert info.result == {"attempt": 2, "pid": rescuer.pid}
    starts, dones = _runs(tmp_path, "start"), _runs(tmp_path, "done")
    assert starts == [(job_id, a, doomed.pid) for a in doomed_starts] + [(job_id, 2, rescuer.pid)]
    # before_ack: the handler completed twice (at-least-once), the result once.
    assert dones == [(job_id, a, doomed.pid) for a in doomed_dones] + [(job_id, 2, rescuer.pid)]


# --- 2. Redis killed and restarted under load ----------------------------------------


class RedisServer:
    """A throwaway ``redis-server`` that keeps its data across a kill -9 (AOF, fsync always)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--dir", str(self.workdir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.returncode is None, (self.workdir / "redis.log").read_text()
            client = Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                if await client.ping():
                    return
            except Exception:  # not up yet
                await asyncio.sleep(0.05)
            finally:
                await client.aclose()
        pytest.fail(f"redis-server did not start: {(self.workdir / 'redis.log').read_text()}")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _retrying(call: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    """``call()``, retried while the backend is unavailable (Redis restarting)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.skipif(not os.access(REDIS_SERVER, os.X_OK), reason=f"no {REDIS_SERVER}")
async def test_worker_survives_a_redis_restart_under_load(tmp_path: Path) -> None:
    """Redis is SIGKILLed and restarted on the same port while a worker runs a stream
    of jobs: the worker reconnects and every job succeeds; a handler ran to completion
    twice only for jobs in flight at the restart."""
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    await server.start()
    concurrency = 4
    kernel = _kernel(tmp_path, server.url, "chaos:")
    worker: Worker | None = None
    try:
        await kernel.open()
        ids = [r.job_id for r in await kernel.jobs.enqueue_many("chaos", [{}] * 80)]
        worker = await Worker.spawn(
            tmp_path, server.url, "chaos:", hold=0.05, concurrency=concurrency
        )

        async def some_done() -> bool:
            return len(_runs(tmp_path, "done")) >= 20

        await _wait(some_done, 20, "20 jobs to run")
        await server.kill()
        await asyncio.sleep(0.2)
        # Nothing can be claimed while Redis is down: a job started by now was in
        # flight at the restart (a claim that got its reply just before the kill
        # starts its handler a moment after it).
        in_flight = {job_id for job_id, _, _ in _runs(tmp_path, "start")}
        await server.start()
        more = await _retrying(lambda: kernel.jobs.enqueue_many("chaos", [{}] * 40))
        ids += [r.job_id for r in more]

        async def all_done() -> bool:
            done: bool = await _retrying(lambda: _succeeded(kernel, ids))
            return done

        await _wait(all_done, 30, "every job to succeed after the restart")
        assert worker.proc.returncode is None, "the worker died with Redis"

        dones = Counter(job_id for job_id, _, _ in _runs(tmp_path, "done"))
        assert set(dones) == set(ids)
        twice = {job_id for job_id, count in dones.items() if count > 1}
        assert twice <= in_flight
        assert len(twice) <= concurrency
        for job_id in ids:
            info = await kernel.jobs.get_job(job_id)
            assert info is not None
            assert info.status == "succeeded"
            # One recorded success: the result of the attempt the queue counted last.
            assert info.result == {"attempt": info.attempt, "pid": worker.pid}
            if job_id not in twice:
                assert dones[job_id] == 1
    finally:
        if worker is not None:
            await worker.stop()
        await kernel.close()
        await server.kill()


# --- 3. 1,000 jobs across 3 workers --------------------------------------------------


async def test_a_thousand_jobs_across_three_workers(
    kernel: Kernel, tmp_path: Path, coordination_url: str | None, prefix: str
) -> None:
    """1,000 jobs on 3 worker processes: each runs exactly once, all succeed, quickly."""
    workers = await asyncio.gather(
        *(Worker.spawn(tmp_path, coordination_url, prefix, concurrency=8) for _ in range(3))
    )
    try:
        started = time.monotonic()
        ids: list[str] = []
        for _ in range(10):
            ids += [r.job_id for r in await kernel.jobs.enqueue_many("chaos", [{}] * 100)]

        async def drained() -> bool:
            status = await kernel.jobs.get_queue_status()
            waiting = sum(status["queues"].values()) + status["scheduled"] + status["running"]
            return waiting == 0 and len(_runs(tmp_path, "done")) >= len(ids)

        await _wait(drained, 30, "1,000 jobs to run")
        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            await worker.stop()
    assert elapsed < 30
    dones = _runs(tmp_path, "done")
    assert len(dones) == 1000
    assert sorted(job_id for job_id, _, _ in dones) == sorted(ids)  # none lost, none twice
    assert {attempt for _, attempt, _ in dones} == {1}
    by_worker = Counter(pid for _, _, pid in dones)
    assert set(by_worker) <= {w.pid for w in workers}
    assert len(by_worker) >= 2, by_worker
    assert await _succeeded(kernel, ids)
