"""Worker processes killed with jobs in flight: nothing is lost, and SIGTERM hands jobs back.

Each worker is a real ``python`` process running :class:`WorkerManager` on the
same coordination backend (the embedded SQLite file or Redis) as the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app_kernel import KernelSettings
from app_kernel.jobs import JobRegistry
from app_kernel.kernel import Kernel
from app_kernel.settings import JobSettings, RedisSettings

pytestmark = pytest.mark.multiprocess

SRC = Path(__file__).resolve().parents[2] / "src"

# env WORKER_CONFIG: {"data_dir", "redis_url", "prefix", "hold", "runs", "jobs": {...}}.
# Runs one worker until a signal; the "slow" task appends "<job_id> <attempt> <pid>" to
# the runs file, then sleeps for "hold" seconds.
CHILD = """
import asyncio, json, os, sys
from app_kernel import KernelSettings
from app_kernel.jobs import JobRegistry, WorkerManager
from app_kernel.kernel import Kernel
from app_kernel.settings import JobSettings, RedisSettings

config = json.loads(os.environ["WORKER_CONFIG"])
registry = JobRegistry()

@registry.task("slow")
async def slow(payload, ctx):
    with open(config["runs"], "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\\n")
    await asyncio.sleep(config["hold"])
    return {"pid": os.getpid()}

settings = KernelSettings(
    debug=True,
    data_dir=config["data_dir"],
    redis=RedisSettings(url=config["redis_url"], key_prefix=config["prefix"]),
    jobs=JobSettings(**config["jobs"]),
)

async def main():
    manager = WorkerManager(Kernel(settings, registry))
    runner = asyncio.create_task(manager.start())
    while not manager.is_running and not runner.done():
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await runner

asyncio.run(main())
"""

JOBS = {
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


@pytest.fixture
def prefix(request: pytest.FixtureRequest, coordination_url: str | None) -> str:
    if coordination_url is None:
        return "app_kernel:"
    value: str = request.getfixturevalue("redis_key_prefix")
    return value


@pytest.fixture
def built(tmp_path: Path, coordination_url: str | None, prefix: str) -> Kernel:
    registry = JobRegistry()
    registry.register("slow", _never_here)
    return Kernel(_settings(tmp_path, coordination_url, prefix), registry)


async def _never_here(payload: dict[str, Any], ctx: Any) -> None:
    raise AssertionError("the test process runs no jobs")


@pytest.fixture
async def kernel(built: Kernel) -> AsyncIterator[Kernel]:
    await built.open()
    try:
        yield built
    finally:
        await built.close()


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(
        cls, tmp_path: Path, redis_url: str | None, prefix: str, *, hold: float
    ) -> Worker:
        config = {
            "data_dir": str(tmp_path),
            "redis_url": redis_url,
            "prefix": prefix,
            "hold": hold,
            "runs": str(tmp_path / "runs.txt"),
            "jobs": JOBS,
        }
        env = {**os.environ, "PYTHONPATH": str(SRC), "WORKER_CONFIG": json.dumps(config)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", line
        return cls(proc)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def _wait(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _runs(tmp_path: Path) -> list[tuple[str, int, int]]:
    path = tmp_path / "runs.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(job_id, int(attempt), int(pid)) for job_id, attempt, pid in rows]


async def test_sigkilled_worker_loses_no_job(
    kernel: Kernel, tmp_path: Path, coordination_url: str | None, prefix: str
) -> None:
    """Jobs in flight in a SIGKILLed worker are reaped and completed by another,
    each with the crashed attempt counted."""
    ids = [(await kernel.jobs.enqueue("slow", {"n": n})).job_id for n in range(4)]
    doomed = await Worker.spawn(tmp_path, coordination_url, prefix, hold=60)
    try:

        async def all_running() -> bool:
            # Claimed is not yet started: wait for every handler's first line too,
            # or the kill can land between the claim and the handler.
            status = await kernel.jobs.get_queue_status()
            return status["running"] == 4 and len(_runs(tmp_path)) == 4

        await _wait(all_running, 20, "4 running jobs, each in its handler")
        doomed.proc.send_signal(signal.SIGKILL)
        await doomed.proc.wait()
        rescuer = await Worker.spawn(tmp_path, coordination_url, prefix, hold=0)
        try:

            async def all_done() -> bool:
                infos = [await kernel.jobs.get_job(job_id) for job_id in ids]
                return all(i is not None and i.status == "succeeded" for i in infos)

            await _wait(all_done, 30, "every job to succeed")
            for job_id in ids:
                info = await kernel.jobs.get_job(job_id)
                assert info is not None
                assert info.attempt == 2
                assert info.result == {"pid": rescuer.proc.pid}
            runs = _runs(tmp_path)
            assert sorted((j, a) for j, a, _ in runs) == sorted(
                [(j, 1) for j in ids] + [(j, 2) for j in ids]
            )
            assert {p for _, a, p in runs if a == 1} == {doomed.proc.pid}
        finally:
            await rescuer.stop()
    finally:
        await doomed.stop()


APP_MODULE = """
import asyncio, os
from app_kernel import ServiceConfig, create_service

async def slow(payload, ctx):
    with open(os.environ["RUNS_FILE"], "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\\n")
    await asyncio.sleep(60)

app = create_service(
    "cli_worker", [], tasks={"slow": slow}, config=ServiceConfig.from_env(),
    manifest=os.environ["MANIFEST"],
)
"""


async def test_cli_worker_exits_zero_on_sigterm_and_hands_the_job_back(
    kernel: Kernel, tmp_path: Path, coordination_url: str | None, prefix: str
) -> None:
    """``app-kernel worker MODULE:APP``: SIGTERM releases the running job (no attempt
    spent), unregisters the worker and exits 0."""
    (tmp_path / "cli_worker_app.py").write_text(APP_MODULE)
    manifest = {"data_dir": str(tmp_path), "redis": {"key_prefix": prefix}, "jobs": JOBS}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "DEBUG": "true",
        "MANIFEST": str(tmp_path / "manifest.json"),
        "RUNS_FILE": str(tmp_path / "runs.txt"),
    }
    if coordination_url:
        env["REDIS_URL"] = coordination_url
    job_id = (await kernel.jobs.enqueue("slow", {})).job_id
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app_kernel",
        "worker",
        "cli_worker_app:app",
        "--concurrency",
        "2",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def running() -> bool:
            info = await kernel.jobs.get_job(job_id)
            started = len(_runs(tmp_path)) == 1  # in its handler, not only claimed
            return info is not None and info.status == "running" and started

        await _wait(running, 30, "the job to run in its handler")
        listed = (await kernel.jobs.get_queue_status())["workers"]
        assert [w["concurrency"] for w in listed] == [2]
        assert [w["pid"] for w in listed] == [proc.pid]
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        info = await kernel.jobs.get_job(job_id)
        assert info is not None
        assert info.status == "queued"
        assert info.attempt == 0
        assert (await kernel.jobs.get_queue_status())["workers"] == []
        assert [a for _, a, _ in _runs(tmp_path)] == [1]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
