"""Duplicates of one idempotent request raced from 4 OS processes: the handler runs once.

Each child serves its own app (its own kernel) on the shared backend: the same
SQLite coordination file or the same Redis prefix. Handler runs are counted as
lines appended to a shared file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

PROCESSES = 4
REQUESTS_PER_PROCESS = 5
SRC = Path(__file__).resolve().parents[2] / "src"

# argv: data_dir, redis URL ("" for SQLite), prefix, runs file, child index, requests.
# Prints "ready" once the kernel is open, waits for a line on stdin, then sends its
# duplicates concurrently and prints the (status, replayed) pairs as JSON.
CHILD = """
import asyncio, json, sys
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI

from app_kernel import KernelSettings, init_app_kernel
from app_kernel.reliability import idempotent_route
from app_kernel.settings import RedisSettings, ReliabilitySettings

data_dir, redis_url, prefix, runs_file, index, count = sys.argv[1:7]

app = FastAPI()

@app.post("/charge", dependencies=[Depends(idempotent_route())])
async def charge() -> dict:
    with open(runs_file, "a") as f:
        f.write(f"{index}\\n")
    await asyncio.sleep(0.5)
    return {"charged_by": index}

settings = KernelSettings(
    debug=True,
    data_dir=data_dir,
    database_url=f"sqlite+aiosqlite:///{Path(data_dir) / f'app-{index}.db'}",
    redis=RedisSettings(url=redis_url or None, key_prefix=prefix or "app_kernel:"),
    reliability=ReliabilitySettings(idempotency_backend_timeout_seconds=5),
)
init_app_kernel(app, settings)

async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            await http.get("/healthz")
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            headers = {"Idempotency-Key": '"charge-0001"'}
            calls = [http.post("/charge", json={"amount": 5}, headers=headers)
                     for _ in range(int(count))]
            responses = await asyncio.gather(*calls)
    print(json.dumps([[r.status_code, r.headers.get("idempotent-replayed")] for r in responses]),
          flush=True)

asyncio.run(main())
"""


# asyncio starts a child with a blocking fork+exec on the loop; on a loaded machine that
# alone can pass the loop guard's 0.1 s.
@pytest.mark.allow_slow_callbacks
async def test_duplicates_across_processes_run_the_handler_once(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    prefix = request.getfixturevalue("redis_key_prefix") if coordination_url else ""
    runs_file = tmp_path / "runs.txt"
    runs_file.touch()
    python_path = [str(SRC), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path),
            coordination_url or "",
            prefix,
            str(runs_file),
            str(index),
            str(REQUESTS_PER_PROCESS),
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
            line = await asyncio.wait_for(child.stdout.readline(), timeout=45)
            assert line == b"ready\n", (line, await child.stderr.read() if child.stderr else b"")
        for child in children:  # release them together
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        results: list[list[object]] = []
        for child in children:
            assert child.stdout is not None
            out = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert out, await child.stderr.read() if child.stderr else b""
            results.extend(json.loads(out))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
            await child.wait()

    assert len(results) == PROCESSES * REQUESTS_PER_PROCESS
    assert len(runs_file.read_text().splitlines()) == 1
    fresh = [r for r in results if r == [200, None]]
    assert len(fresh) == 1, results
    assert all(r in ([200, None], [409, None], [200, "true"]) for r in results), results
