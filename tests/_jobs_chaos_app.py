"""A worker process for the job chaos tests: ``python tests/_jobs_chaos_app.py``.

Reads ``CHAOS_CONFIG`` (JSON): ``data_dir``, ``redis_url``, ``prefix``, ``runs``,
``hold``, ``concurrency`` and ``jobs`` (JobSettings fields). Failpoints come from
``APP_KERNEL_FAILPOINTS`` like in any worker. Prints ``ready`` once the worker
runs, then runs until a signal.

The ``chaos`` task appends ``start <job_id> <attempt> <pid>`` to the runs file,
sleeps ``hold`` seconds, raises on attempt 1 when the payload says
``fail_first``, else appends ``done <job_id> <attempt> <pid>`` and returns
``{"attempt": ..., "pid": ...}``. Lines are short single ``write`` calls on an
``O_APPEND`` file, so several processes can share it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from app_kernel import KernelSettings
from app_kernel.jobs import JobContext, JobRegistry, WorkerManager
from app_kernel.kernel import Kernel
from app_kernel.settings import JobSettings, RedisSettings

CONFIG_ENV = "CHAOS_CONFIG"


def record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def build(config: dict[str, Any]) -> WorkerManager:
    registry = JobRegistry()
    runs = str(config["runs"])
    hold = float(config["hold"])
    pid = os.getpid()

    @registry.task("chaos")
    async def chaos(payload: dict[str, Any], ctx: JobContext) -> dict[str, int]:
        record(runs, f"start {ctx.job_id} {ctx.attempt} {pid}")
        if hold:
            await asyncio.sleep(hold)
        if payload.get("fail_first") and ctx.attempt == 1:
            msg = "the first attempt fails"
            raise RuntimeError(msg)
        record(runs, f"done {ctx.job_id} {ctx.attempt} {pid}")
        return {"attempt": ctx.attempt, "pid": pid}

    settings = KernelSettings(
        debug=True,
        data_dir=config["data_dir"],
        redis=RedisSettings(url=config["redis_url"], key_prefix=config["prefix"]),
        jobs=JobSettings(**config["jobs"]),
    )
    return WorkerManager(Kernel(settings, registry), concurrency=config.get("concurrency"))


async def main() -> None:
    manager = build(json.loads(os.environ[CONFIG_ENV]))
    runner = asyncio.create_task(manager.start())
    while not manager.is_running and not runner.done():  # noqa: ASYNC110 - no event to await
        await asyncio.sleep(0.01)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await runner


if __name__ == "__main__":
    asyncio.run(main())
