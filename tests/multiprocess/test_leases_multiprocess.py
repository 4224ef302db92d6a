"""Stream leases raced from several OS processes, and freed by a killed one's TTL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.settings import StreamingSettings
from app_kernel.streaming import StreamLeaseLimiter
from app_kernel.streaming.backends.redis import RedisLeaseBackend
from app_kernel.streaming.backends.sqlite import SqliteLeaseBackend

pytestmark = pytest.mark.multiprocess

PROCESSES = 4
CALLS_PER_PROCESS = 10
LIMIT = 3
SRC = Path(__file__).resolve().parents[2] / "src"

# argv: kind ("sqlite" | "redis"), target (db path | URL), prefix, user, mode, calls.
# mode "race": prints "ready", waits for a line on stdin, then makes `calls` concurrent
# acquires (releasing none) and prints the number granted.
# mode "hold": holds `calls` leases with stream_lease (1 s TTL, refreshed every 0.25 s),
# prints "held" and sleeps until killed.
CHILD = """
import asyncio, contextlib, sys
from pathlib import Path

from app_kernel.settings import StreamingSettings
from app_kernel.streaming import StreamLeaseLimiter, stream_lease

async def main(kind, target, prefix, user, mode, calls):
    if kind == "sqlite":
        from app_kernel._sqlite.store import SqliteStore
        from app_kernel.streaming.backends.sqlite import SqliteLeaseBackend
        store = SqliteStore(Path(target))
        backend = SqliteLeaseBackend(store)
        await store.open()
    else:
        import redis.asyncio
        from app_kernel._redis.keys import RedisKeys
        from app_kernel.streaming.backends.redis import RedisLeaseBackend
        client = redis.asyncio.Redis.from_url(target)
        backend = RedisLeaseBackend(client, RedisKeys(prefix))
    settings = StreamingSettings(max_concurrent_per_user=3, backend_timeout_seconds=10)
    leases = StreamLeaseLimiter(backend, settings)
    await leases.get_active_streams("warm-up")
    if mode == "race":
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        granted = await asyncio.gather(*(leases.acquire_stream_lease(user) for _ in range(calls)))
        print(sum(lease is not None for lease in granted), flush=True)
        return
    leases.lease_ttl_seconds = 1.0
    leases.refresh_interval_seconds = 0.25
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(calls):
            await stack.enter_async_context(stream_lease(user, limiter=leases))
        print("held", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:6], int(sys.argv[6])))
"""


@pytest.fixture
async def target(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[StreamLeaseLimiter, list[str]]]:
    """The parent's limiter and the child's argv naming the same backend."""
    settings = StreamingSettings(max_concurrent_per_user=LIMIT, backend_timeout_seconds=10)
    if coordination_url is None:
        path = tmp_path / "kernel.db"
        store = SqliteStore(path)
        leases = StreamLeaseLimiter(SqliteLeaseBackend(store), settings)
        await store.open()
        try:
            yield leases, ["sqlite", str(path), ""]
        finally:
            await store.close()
    else:
        prefix: str = request.getfixturevalue("redis_key_prefix")
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            leases = StreamLeaseLimiter(RedisLeaseBackend(client, RedisKeys(prefix)), settings)
            yield leases, ["redis", coordination_url, prefix]
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


async def _expect_line(child: asyncio.subprocess.Process, expected: bytes) -> None:
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
    if line != expected:
        child.kill()
        _, err = await child.communicate()
        pytest.fail(f"child said {line!r}, expected {expected!r}:\n{err.decode()}")


# asyncio starts a child with a blocking fork+exec on the loop; on a loaded machine that
# alone can pass the loop guard's 0.1 s.
@pytest.mark.allow_slow_callbacks
async def test_processes_racing_for_one_user_get_at_most_the_limit(
    target: tuple[StreamLeaseLimiter, list[str]],
) -> None:
    leases, backend_args = target
    user = uuid.uuid4().hex
    children = [
        await _spawn([*backend_args, user, "race", str(CALLS_PER_PROCESS)])
        for _ in range(PROCESSES)
    ]
    try:
        for child in children:
            await _expect_line(child, b"ready\n")
        for child in children:  # release them together
            assert child.stdin is not None
            child.stdin.write(b"go\n")
        for child in children:
            assert child.stdin is not None
            await child.stdin.drain()
            child.stdin.close()
        results = [await asyncio.wait_for(child.communicate(), timeout=30) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()

    granted = 0
    for (out, err), child in zip(results, children, strict=True):
        assert child.returncode == 0, err.decode()
        granted += json.loads(out)
    # Nobody released anything, so every grant is still held: exactly the limit.
    assert granted == LIMIT
    assert await leases.get_active_streams(user) == LIMIT


@pytest.mark.allow_slow_callbacks
async def test_leases_of_a_killed_process_expire_after_their_ttl(
    target: tuple[StreamLeaseLimiter, list[str]],
) -> None:
    leases, backend_args = target
    user = uuid.uuid4().hex
    child = await _spawn([*backend_args, user, "hold", str(LIMIT)])
    try:
        await _expect_line(child, b"held\n")
        await asyncio.sleep(1.5)  # past the 1 s TTL: the child's refreshes keep them
        assert await leases.get_active_streams(user) == LIMIT
        assert await leases.acquire_stream_lease(user) is None

        child.send_signal(signal.SIGKILL)
        await child.wait()
        assert await leases.get_active_streams(user) > 0  # nobody released them

        await asyncio.sleep(1.3)
        assert await leases.get_active_streams(user) == 0
        assert await leases.acquire_stream_lease(user) is not None
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL
