"""One job queue drained by several OS processes at once: each job runs exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.jobs.backends.base import JobQueue, JobSpec

pytestmark = pytest.mark.multiprocess

PROCESSES = 3
JOBS = 300
SRC = Path(__file__).resolve().parents[2] / "src"

# argv: kind ("sqlite" | "redis"), target (db path | URL), prefix, worker id.
# Prints "ready", waits for a line on stdin, then claims and completes jobs (in
# batches of up to 5) until the queue stays empty, and prints the ids it completed
# as a JSON list.
CHILD = """
import asyncio, json, sys
from pathlib import Path

async def main(kind, target, prefix, worker_id):
    if kind == "sqlite":
        from app_kernel._sqlite.store import SqliteStore
        from app_kernel.jobs.backends.sqlite import SqliteJobQueue
        store = SqliteStore(Path(target))
        queue = SqliteJobQueue(store)
        await store.open()
    else:
        import redis.asyncio
        from app_kernel._redis.keys import RedisKeys
        from app_kernel.jobs.backends.redis import RedisJobQueue
        client = redis.asyncio.Redis.from_url(target)
        queue = RedisJobQueue(client, RedisKeys(prefix), namespace="test")
    await queue.status()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    done = []
    idle = 0
    while idle < 3:
        claimed = await queue.claim(worker_id, 5, lease_seconds=60)
        if not claimed:
            idle += 1
            await queue.wait_for_work(0.1)
            continue
        idle = 0
        for job in claimed:
            ok = await queue.complete(job.job_id, job.token, '"ok"', result_ttl_seconds=600)
            if ok:
                done.append(job.job_id)
    print(json.dumps(done), flush=True)

asyncio.run(main(*sys.argv[1:5]))
"""


@pytest.fixture
async def target(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[JobQueue, list[str]]]:
    """The parent's queue and the child's argv naming the same backend."""
    if coordination_url is None:
        from app_kernel.jobs.backends.sqlite import SqliteJobQueue

        path = tmp_path / "kernel.db"
        store = SqliteStore(path)
        queue = SqliteJobQueue(store)
        await store.open()
        try:
            yield queue, ["sqlite", str(path), ""]
        finally:
            await store.close()
    else:
        # Imported here: the SQLite runs must not need the Redis backend module.
        from app_kernel.jobs.backends.redis import RedisJobQueue

        prefix: str = request.getfixturevalue("redis_key_prefix")
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            yield (
                RedisJobQueue(client, RedisKeys(prefix), namespace="test"),
                ["redis", coordination_url, prefix],
            )
        finally:
            await client.aclose()


async def _spawn(args: list[str]) -> asyncio.subprocess.Process:
    python_path = [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _expect_ready(child: asyncio.subprocess.Process) -> None:
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
    if line != b"ready\n":
        child.kill()
        _, err = await child.communicate()
        pytest.fail(f"child said {line!r}, expected b'ready\\n':\n{err.decode()}")


# asyncio starts a child with a blocking fork+exec on the loop; on a loaded machine that
# alone can pass the loop guard's 0.1 s.
@pytest.mark.allow_slow_callbacks
async def test_processes_draining_one_queue_complete_every_job_once(
    target: tuple[JobQueue, list[str]],
) -> None:
    queue, backend_args = target
    ids = [uuid.uuid4().hex for _ in range(JOBS)]
    await queue.enqueue([JobSpec(job_id=i, task_name="t", payload_json="{}") for i in ids])
    children = [await _spawn([*backend_args, f"w{n}"]) for n in range(PROCESSES)]
    try:
        for child in children:
            await _expect_ready(child)
        for child in children:  # release them together
            assert child.stdin is not None
            child.stdin.write(b"go\n")
        for child in children:
            assert child.stdin is not None
            await child.stdin.drain()
            child.stdin.close()
        results = [await asyncio.wait_for(child.communicate(), timeout=60) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()

    completed: Counter[str] = Counter()
    per_process = []
    for (out, err), child in zip(results, children, strict=True):
        assert child.returncode == 0, err.decode()
        done = json.loads(out)
        per_process.append(len(done))
        completed.update(done)
    assert sorted(completed) == sorted(ids)
    assert set(completed.values()) == {1}
    status = await queue.status()
    assert status["running"] == 0
    assert sum(status["queues"].values()) == 0
    for job_id in ids[:: JOBS // 10]:
        info = await queue.get(job_id)
        assert info is not None
        assert info.status == "succeeded"
        assert info.attempt == 1  # claimed once: nobody died
