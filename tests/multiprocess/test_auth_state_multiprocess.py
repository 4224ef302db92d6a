"""Refresh-token rotation raced from several OS processes against one backend."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.auth.state.base import AuthStateBackend, RotateOutcome
from app_kernel.auth.state.redis import RedisAuthState
from app_kernel.auth.state.sqlite import SqliteAuthState

pytestmark = pytest.mark.multiprocess

PROCESSES = 4
CALLS_PER_PROCESS = 10
SRC = Path(__file__).resolve().parents[2] / "src"

# argv: kind ("sqlite" | "redis"), target (db path | URL), prefix, family id, old jti, tag.
# Prints "ready" once connected, waits for a line on stdin, then races and prints the
# outcomes as a JSON list.
CHILD = """
import asyncio, json, sys
from pathlib import Path

async def main(kind, target, prefix, family, old, tag):
    if kind == "sqlite":
        from app_kernel._sqlite.store import SqliteStore
        from app_kernel.auth.state.sqlite import SqliteAuthState
        store = SqliteStore(Path(target))
        state = SqliteAuthState(store)
        await store.open()
        close = store.close
    else:
        import redis.asyncio
        from app_kernel._redis.keys import RedisKeys
        from app_kernel.auth.state.redis import RedisAuthState
        client = redis.asyncio.Redis.from_url(target)
        state = RedisAuthState(client, RedisKeys(prefix))
        await state.failures(["warm-up"])
        close = client.aclose
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    calls = [state.rotate(family, old, f"{tag}-{i}") for i in range(int(sys.argv[7]))]
    outcomes = await asyncio.gather(*calls)
    print(json.dumps([outcome.value for outcome in outcomes]), flush=True)
    await close()

asyncio.run(main(*sys.argv[1:7]))
"""


@pytest.fixture
async def target(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[AuthStateBackend, list[str]]]:
    """The parent's backend and the child's argv naming the same backend."""
    if coordination_url is None:
        path = tmp_path / "kernel.db"
        store = SqliteStore(path)
        state = SqliteAuthState(store)
        await store.open()
        try:
            yield state, ["sqlite", str(path), ""]
        finally:
            await store.close()
    else:
        prefix: str = request.getfixturevalue("redis_key_prefix")
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            yield RedisAuthState(client, RedisKeys(prefix)), ["redis", coordination_url, prefix]
        finally:
            await client.aclose()


# asyncio starts a child with a blocking fork+exec on the loop; on a loaded machine that
# alone can pass the loop guard's 0.1 s.
@pytest.mark.allow_slow_callbacks
async def test_rotation_race_across_processes_admits_exactly_one(
    target: tuple[AuthStateBackend, list[str]],
) -> None:
    state, backend_args = target
    family = uuid.uuid4().hex
    await state.start_family(family, "user-1", "j0", await state.now() + 60)
    python_path = [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            *backend_args,
            family,
            "j0",
            f"p{index}",
            str(CALLS_PER_PROCESS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for index in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert line == b"ready\n", (line, await child.stderr.read() if child.stderr else b"")
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

    outcomes: list[str] = []
    for (out, err), child in zip(results, children, strict=True):
        assert child.returncode == 0, err.decode()
        outcomes += json.loads(out)
    assert len(outcomes) == PROCESSES * CALLS_PER_PROCESS
    assert outcomes.count(RotateOutcome.ROTATED.value) == 1
    assert outcomes.count(RotateOutcome.REUSED.value) == 1
    assert outcomes.count(RotateOutcome.REVOKED.value) == PROCESSES * CALLS_PER_PROCESS - 2
    assert await state.family_user(family) is None
