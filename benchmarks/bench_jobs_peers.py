"""Our job queue against arq, SAQ and huey on the same Redis, in one run.

Usage::

    python benchmarks/bench_jobs_peers.py [--redis-url redis://127.0.0.1:6379/0]
                                          [--jobs 20000] [--quick] [--only ours,arq]

For each system (ours on Redis, ours on the embedded SQLite file, arq, SAQ,
huey), with no-op jobs:

* **enqueue, one at a time**: awaited one after the other (2,000 jobs);
* **enqueue, batched**: ours ``JobClient.enqueue_many`` (500 per call); arq and
  SAQ have no batch API, so 500 ``enqueue`` calls are gathered at once (they
  pipeline over the connection pool); huey's enqueue is synchronous, so its
  serialised messages are pushed in one Redis pipeline per 500;
* **drain**: ONE worker process (ours: ``python -m app_kernel worker`` on a tiny
  app module, ``--concurrency 50``; arq ``max_jobs=50``; SAQ
  ``concurrency=50``; huey ``huey_consumer -w 50 -k thread``) is started and
  warmed up idle, then ``--jobs`` jobs are enqueued in batches; throughput is
  measured from the first enqueue to the moment a completion counter in Redis
  (``INCR`` in every handler) reaches ``--jobs``;
* **latency**: jobs enqueued one at a time at a steady 200 jobs/s for 10 s; the
  handler records ``time.time()`` at its start minus the enqueue time carried in
  the job (same host, same clock); p50 and p99.

Every worker logs at WARNING (per-job INFO lines would measure logging).
arq's ``poll_delay`` is lowered from its 0.5 s default to 0.01 s: with the
default, a worker sleeps 0.5 s between reads of at most ``max_jobs`` jobs, so
its throughput is capped at 100 jobs/s and its latency is about 250 ms; the
figures here are therefore arq at its best, not as shipped. Everything else is
default. Keys live under a per-run prefix and are deleted afterwards. No
asserts on timing: the numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio

ENQUEUE_SINGLE = 2_000
BATCH = 500
CONCURRENCY = 50
LATENCY_RATE = 200.0
LATENCY_SECONDS = 10.0
JWT = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789"

GUARANTEES = {
    "ours (redis)": "at-least-once (leases + reaper)",
    "ours (sqlite)": "at-least-once (leases + reaper)",
    "arq": "at-least-once, pessimistic (job re-run if the worker dies)",
    "saq": "none stated",
    "huey": "at-most-once (a message is popped before it runs)",
}

# --- the worker-side modules (written to a temporary directory) ------------------------

OURS_APP = """
import os, time
import redis.asyncio
from fastapi import FastAPI
from app_kernel import KernelSettings, init_app_kernel
from app_kernel.jobs import JobRegistry
from app_kernel.settings import JobSettings, RedisSettings

RUN = os.environ["BENCH_RUN"]
_client = None

registry = JobRegistry()


@registry.task("noop")
async def noop(payload, ctx):
    global _client
    started = time.time()
    if _client is None:
        _client = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS"])
    ts = payload.get("ts", 0)
    if ts:
        await _client.rpush(f"bench:{RUN}:lat", started - ts)
    await _client.incr(f"bench:{RUN}:done")


def settings():
    backend = os.environ["BENCH_BACKEND"]
    redis_settings = RedisSettings(
        url=os.environ["BENCH_REDIS"] if backend == "redis" else None,
        key_prefix=f"bench:{RUN}:ours:",
    )
    return KernelSettings(
        data_dir=os.environ["BENCH_DATA"],
        redis=redis_settings,
        jobs=JobSettings(worker_count=50),
    )


app = FastAPI()
init_app_kernel(app, settings(), registry)
"""

PEER_APPS = """
import os, time
RUN = os.environ["BENCH_RUN"]
URL = os.environ["BENCH_REDIS"]

# arq ---------------------------------------------------------------------------
try:
    from arq.connections import RedisSettings as ArqRedisSettings

    async def arq_noop(ctx, ts=0):
        started = time.time()
        if ts:
            await ctx["redis"].rpush(f"bench:{RUN}:lat", started - ts)
        await ctx["redis"].incr(f"bench:{RUN}:done")

    class ArqWorker:
        functions = [arq_noop]
        redis_settings = ArqRedisSettings.from_dsn(URL)
        queue_name = f"arq:{RUN}:queue"
        max_jobs = 50
        poll_delay = 0.01
        keep_result = 0
        health_check_key = f"arq:{RUN}:health"
except ImportError:
    pass

# saq ---------------------------------------------------------------------------
try:
    import saq
    import redis.asyncio as _aredis

    _saq_client = None

    async def saq_noop(ctx, *, ts=0):
        global _saq_client
        started = time.time()
        if _saq_client is None:
            _saq_client = _aredis.Redis.from_url(URL)
        if ts:
            await _saq_client.rpush(f"bench:{RUN}:lat", started - ts)
        await _saq_client.incr(f"bench:{RUN}:done")

    saq_settings = {
        "queue": saq.Queue.from_url(URL, name=f"saq-{RUN}"),
        "functions": [saq_noop],
        "concurrency": 50,
    }
except ImportError:
    pass

# huey --------------------------------------------------------------------------
try:
    import redis as _sredis
    from huey import RedisHuey

    huey = RedisHuey(f"huey-{RUN}", url=URL)
    _huey_client = _sredis.Redis.from_url(URL)

    @huey.task()
    def huey_noop(ts=0):
        started = time.time()
        if ts:
            _huey_client.rpush(f"bench:{RUN}:lat", started - ts)
        _huey_client.incr(f"bench:{RUN}:done")
except ImportError:
    pass
"""


# --- results -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    enqueue_single: float | None = None
    enqueue_batched: float | None = None
    drain: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    notes: list[str] = field(default_factory=list)


class System:
    """One queue under test: enqueue functions and a worker command."""

    name: str

    async def setup(self) -> None: ...
    async def enqueue(self, ts: float = 0.0) -> None: ...
    async def enqueue_batch(self, count: int) -> None: ...
    def worker_command(self) -> list[str]:
        raise NotImplementedError

    async def close(self) -> None: ...


class Ours(System):
    def __init__(self, backend: str, env: dict[str, str]) -> None:
        self.name = f"ours ({backend})"
        self.backend = backend
        self.env = env
        self.kernel: Any = None
        self.module: Any = None

    async def setup(self) -> None:
        sys.path.insert(0, self.env["BENCH_MODULES"])
        os.environ.update(self.env)
        os.environ["BENCH_BACKEND"] = self.backend
        spec = importlib.util.spec_from_file_location(
            f"bench_ours_app_{self.backend}", Path(self.env["BENCH_MODULES"]) / "bench_ours.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.module = module
        await self.reopen()

    async def reopen(self) -> None:
        from app_kernel.kernel import Kernel

        self.kernel = Kernel(self.module.settings(), self.module.registry)
        await self.kernel.open()

    async def enqueue(self, ts: float = 0.0) -> None:
        await self.kernel.jobs.enqueue("noop", {"ts": ts})

    async def enqueue_batch(self, count: int) -> None:
        await self.kernel.jobs.enqueue_many("noop", [{"ts": 0}] * count)

    def worker_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "app_kernel",
            "worker",
            "bench_ours:app",
            "--concurrency",
            str(CONCURRENCY),
        ]

    async def close(self) -> None:
        if self.kernel is not None:
            await self.kernel.close()


class Arq(System):
    name = "arq"

    def __init__(self, url: str, run: str) -> None:
        self.url, self.run = url, run
        self.pool: Any = None
        self.count = 0

    async def setup(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        settings = RedisSettings.from_dsn(self.url)
        settings.max_connections = 1_000  # the gathered batch opens many connections
        self.pool = await create_pool(settings)

    async def enqueue(self, ts: float = 0.0) -> None:
        self.count += 1
        await self.pool.enqueue_job(
            "arq_noop", ts, _queue_name=f"arq:{self.run}:queue", _job_id=f"{self.run}-{self.count}"
        )

    async def enqueue_batch(self, count: int) -> None:
        first = self.count
        self.count += count
        await asyncio.gather(
            *(
                self.pool.enqueue_job(
                    "arq_noop", 0, _queue_name=f"arq:{self.run}:queue", _job_id=f"{self.run}-{n}"
                )
                for n in range(first + 1, first + count + 1)
            )
        )

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "arq", "bench_peers.ArqWorker"]

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()


class Saq(System):
    name = "saq"

    def __init__(self, url: str, run: str) -> None:
        self.url, self.run = url, run
        self.queue: Any = None

    async def setup(self) -> None:
        import saq

        self.queue = saq.Queue.from_url(self.url, name=f"saq-{self.run}")
        await self.queue.connect()

    async def enqueue(self, ts: float = 0.0) -> None:
        await self.queue.enqueue("saq_noop", ts=ts)

    async def enqueue_batch(self, count: int) -> None:
        await asyncio.gather(*(self.queue.enqueue("saq_noop", ts=0) for _ in range(count)))

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "saq", "bench_peers.saq_settings", "--quiet"]

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.disconnect()


class Huey(System):
    name = "huey"

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.module: Any = None

    async def setup(self) -> None:
        os.environ.update(self.env)
        # Imported under the consumer's module name: huey names tasks after their module.
        sys.path.insert(0, self.env["BENCH_MODULES"])
        self.module = importlib.import_module("bench_peers")

    async def enqueue(self, ts: float = 0.0) -> None:
        # huey's client is synchronous: one blocking round trip, as an app would do it.
        self.module.huey_noop(ts)

    async def enqueue_batch(self, count: int) -> None:
        huey = self.module.huey
        storage = huey.storage
        pipe = storage.conn.pipeline(transaction=False)
        for _ in range(count):
            task = self.module.huey_noop.s(0)
            pipe.lpush(storage.queue_key, huey.serialize_task(task))
        pipe.execute()

    def worker_command(self) -> list[str]:
        consumer = Path(sys.executable).with_name("huey_consumer")
        return [str(consumer), "bench_peers.huey", "-w", str(CONCURRENCY), "-k", "thread", "-q"]


# --- measurements ---------------------------------------------------------------------------


def start_worker(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=env["BENCH_MODULES"],
            env={**os.environ, **env, "PYTHONPATH": env["BENCH_MODULES"]},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wipe_files(directory: str) -> None:
    for path in Path(directory).rglob("*"):
        if path.is_file():
            path.unlink()


async def timed_rate(count: int, step: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await step()
    return count / (time.perf_counter() - started)


async def wait_count(client: Any, key: str, target: int, within: float) -> float | None:
    """perf_counter() when the counter reached ``target``; None on timeout."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if int(await client.get(key) or 0) >= target:
            return time.perf_counter()
        await asyncio.sleep(0.005)
    return None


async def measure(
    system: System,
    client: Any,
    run: str,
    jobs: int,
    env: dict[str, str],
    flush: Callable[[], Awaitable[None]],
) -> Result:
    result = Result(system.name)
    done, lat = f"bench:{run}:done", f"bench:{run}:lat"
    await system.setup()
    worker: subprocess.Popen[bytes] | None = None
    log = Path(env["BENCH_MODULES"]) / f"{system.name.replace(' ', '_')}.log"
    try:
        # 1. enqueue rates, no worker running; then the queue is emptied.
        result.enqueue_single = await timed_rate(ENQUEUE_SINGLE, system.enqueue)
        started = time.perf_counter()
        for first in range(0, 5_000, BATCH):
            await system.enqueue_batch(min(BATCH, 5_000 - first))
        result.enqueue_batched = 5_000 / (time.perf_counter() - started)
        await flush()

        # 2. one worker process, warmed up on one job.
        worker = await asyncio.to_thread(start_worker, system.worker_command(), env, log)
        await client.delete(done, lat)
        await system.enqueue()
        if await wait_count(client, done, 1, 30.0) is None:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            result.notes.append(f"worker never ran a job; its output ends: {tail!r}")
            return result
        await client.delete(done, lat)

        # 3. drain: first enqueue to last completion.
        started = time.perf_counter()
        for first in range(0, jobs, BATCH):
            await system.enqueue_batch(min(BATCH, jobs - first))
        finished = await wait_count(client, done, jobs, 120.0)
        if finished is None:
            count = int(await client.get(done) or 0)
            result.drain = count / (time.perf_counter() - started)
            result.notes.append(f"drain stopped at 120 s after {count:,} of {jobs:,} jobs")
        else:
            result.drain = jobs / (finished - started)

        # 4. latency at a steady rate, one enqueue at a time.
        await client.delete(done, lat)
        count = int(LATENCY_RATE * LATENCY_SECONDS)
        origin = time.perf_counter()
        for n in range(count):
            delay = origin + n / LATENCY_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await system.enqueue(time.time())
        await wait_count(client, done, count, 30.0)
        samples = sorted(float(v) for v in await client.lrange(lat, 0, -1))
        if samples:
            result.p50_ms = statistics.median(samples) * 1000
            result.p99_ms = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000
        if len(samples) < count:
            result.notes.append(f"latency: {len(samples)} of {count} jobs ran")
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(worker.wait, 20)
            except subprocess.TimeoutExpired:
                worker.kill()
                await asyncio.to_thread(worker.wait)
        await system.close()
    return result


async def delete_matching(client: Any, pattern: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"


def ratio(ours: float | None, peer: float | None) -> str:
    return "-" if not ours or not peer else f"{ours / peer:.2f}x"


def report(results: list[Result], jobs: int) -> None:
    print()
    print(
        f"No-op jobs; drain = one worker process, concurrency {CONCURRENCY}, {jobs:,} jobs; "
        f"latency at {LATENCY_RATE:.0f} jobs/s for {LATENCY_SECONDS:.0f} s."
    )
    header = (
        f"{'system':<14} {'enq 1-by-1/s':>13} {'enq batch/s':>12} {'drain jobs/s':>13} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<14} {fmt(r.enqueue_single):>13} {fmt(r.enqueue_batched):>12} "
            f"{fmt(r.drain):>13} {fmt(r.p50_ms):>8} {fmt(r.p99_ms):>8}"
        )
    ours = next((r for r in results if r.name == "ours (redis)"), None)
    if ours is not None:
        print()
        print("Ratios ours (redis) / peer: rates above 1 favour us; latencies below 1 favour us.")
        for r in results:
            if r is ours or r.name.startswith("ours"):
                continue
            print(
                f"  vs {r.name:<6} enqueue 1-by-1 {ratio(ours.enqueue_single, r.enqueue_single)}, "
                f"batched {ratio(ours.enqueue_batched, r.enqueue_batched)}, "
                f"drain {ratio(ours.drain, r.drain)}, p50 {ratio(ours.p50_ms, r.p50_ms)}, "
                f"p99 {ratio(ours.p99_ms, r.p99_ms)}"
            )
    print()
    print("Delivery guarantees:")
    for r in results:
        print(f"  {r.name:<14} {GUARANTEES.get(r.name, '?')}")
    for r in results:
        for note in r.notes:
            print(f"  note, {r.name}: {note}")


async def main(url: str, jobs: int, only: set[str] | None) -> None:
    run = uuid.uuid4().hex[:8]
    client = redis.asyncio.Redis.from_url(url)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-peers-") as tmp:
        modules = Path(tmp)
        (modules / "bench_ours.py").write_text(textwrap.dedent(OURS_APP))
        (modules / "bench_peers.py").write_text(textwrap.dedent(PEER_APPS))
        env = {
            "BENCH_RUN": run,
            "BENCH_REDIS": url,
            "BENCH_MODULES": tmp,
            "LOG_LEVEL": "WARNING",
            "JWT_SECRET": JWT,
        }
        candidates: list[tuple[str, Callable[[], System], str | None]] = []
        for backend in ("redis", "sqlite"):
            data = modules / f"data-{backend}"
            data.mkdir()
            candidates.append(
                (
                    f"ours-{backend}",
                    functools.partial(
                        Ours, backend, {**env, "BENCH_DATA": str(data), "BENCH_BACKEND": backend}
                    ),
                    None,
                )
            )
        candidates += [
            ("arq", lambda: Arq(url, run), "arq"),
            ("saq", lambda: Saq(url, run), "saq"),
            ("huey", lambda: Huey(env), "huey"),
        ]
        try:
            for key, build, package in candidates:
                if only is not None and key.split("-")[0] not in only and key not in only:
                    continue
                if package is not None and importlib.util.find_spec(package) is None:
                    result = Result(package, notes=[f"{package} is not installed; skipped"])
                    results.append(result)
                    print(f"{package}: not installed, skipped", flush=True)
                    continue
                system = build()
                backend_env = getattr(system, "env", env)

                async def flush(system: System = system) -> None:
                    await flush_queue(system, client, run)

                print(f"measuring {system.name} ...", flush=True)
                began = time.perf_counter()
                try:
                    results.append(await measure(system, client, run, jobs, backend_env, flush))
                except Exception as exc:  # a peer that cannot run is reported, not fatal
                    results.append(Result(system.name, notes=[f"failed: {exc!r}"]))
                print(f"  ({time.perf_counter() - began:.0f} s)", flush=True)
        finally:
            for pattern in (f"bench:{run}:*", f"arq:*{run}*", f"saq:saq-{run}*", f"*huey-{run}*"):
                await delete_matching(client, pattern)
            await client.aclose()
    report(results, jobs)


async def flush_queue(system: System, client: Any, run: str) -> None:
    """Empty the queue after the enqueue-rate runs (no worker was running)."""
    if isinstance(system, Ours):
        if system.backend == "redis":
            await delete_matching(client, f"bench:{run}:ours:*")
        else:
            await system.kernel.close()
            await asyncio.to_thread(wipe_files, system.env["BENCH_DATA"])
            await system.reopen()
    elif isinstance(system, Arq):
        await delete_matching(client, f"arq:*{run}*")
    elif isinstance(system, Saq):
        await delete_matching(client, f"saq:saq-{run}*")
    elif isinstance(system, Huey):
        with contextlib.suppress(Exception):
            system.module.huey.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs drained (default 20,000)")
    parser.add_argument("--quick", action="store_true", help="drain 5,000 jobs instead")
    parser.add_argument(
        "--only", default=None, help="comma-separated: ours,ours-redis,ours-sqlite,arq,saq,huey"
    )
    args = parser.parse_args()
    selected = {s.strip() for s in args.only.split(",")} if args.only else None
    asyncio.run(main(args.redis_url, 5_000 if args.quick else args.jobs, selected))
