"""Job metrics, trace context from request to job logs, and the worker's metrics port.

Metrics are read back from the kernel's own exposition (parsed with
prometheus_client's parser), on the embedded SQLite file and on Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from _app_factory import log_lines, serve, settings_for
from app_kernel import KernelSettings, init_app_kernel
from app_kernel._runtime import kernel_of_app
from app_kernel.jobs import JobContext, JobInfo, JobRegistry, PermanentError, Retry, WorkerManager
from app_kernel.jobs.metrics import UNKNOWN_TASK, WorkerMetricsServer
from app_kernel.kernel import Kernel
from app_kernel.observability.tracing import reset_trace_id, set_trace_id
from app_kernel.settings import (
    FeatureSettings,
    JobSettings,
    ObservabilitySettings,
    RedisSettings,
)

FAST = {
    "lease_seconds": 1.0,
    "heartbeat_seconds": 0.3,
    "reap_interval_seconds": 0.2,
    "retry_backoff_base_seconds": 0.05,
    "retry_backoff_cap_seconds": 0.1,
    "shutdown_grace_seconds": 2.0,
    "worker_count": 4,
}
TOKEN = "worker-metrics-token-0123456789"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def exposition(kernel: Kernel) -> Samples:
    body, _ = await asyncio.to_thread(kernel.metrics.render)
    return await asyncio.to_thread(parse, body.decode())


def make_registry() -> JobRegistry:
    registry = JobRegistry()

    @registry.task("ok")
    async def ok(payload: dict[str, Any], ctx: JobContext) -> int:
        ctx.log.info("ok ran")
        return 1

    @registry.task("flaky", max_attempts=3)
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise Retry(delay_seconds=0.01)
        return "second time"

    @registry.task("broken", max_attempts=1)
    async def broken(payload: dict[str, Any], ctx: JobContext) -> None:
        msg = "never works"
        raise PermanentError(msg)

    return registry


def kernel_settings(
    tmp_path: Path, coordination_url: str | None, prefix: str | None, **overrides: Any
) -> KernelSettings:
    redis = RedisSettings(url=coordination_url, key_prefix=prefix or "app_kernel:")
    return KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        jobs=JobSettings(**FAST),
        redis=redis,
        **overrides,
    )


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest, coordination_url: str | None) -> str | None:
    if coordination_url is None:
        return None
    prefix: str = request.getfixturevalue("redis_key_prefix")
    return prefix


@pytest.fixture
def kernel(tmp_path: Path, coordination_url: str | None, redis_prefix: str | None) -> Kernel:
    """Built in a sync fixture: constructing a kernel is blocking work."""
    return Kernel(kernel_settings(tmp_path, coordination_url, redis_prefix), make_registry())


async def run_worker(kernel: Kernel) -> tuple[WorkerManager, asyncio.Task[None]]:
    manager = WorkerManager(kernel, handle_signals=False)
    task = asyncio.create_task(manager.start())
    while not manager.is_running or manager.started_at is None:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return manager, task


async def finished(kernel: Kernel, job_id: str, within: float = 10.0) -> JobInfo:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        info = await kernel.jobs.get_job(job_id)
        if info is not None and info.status in ("succeeded", "dead"):
            return info
        await asyncio.sleep(0.02)
    pytest.fail(f"job {job_id} never finished")


@pytest.fixture
async def worker(kernel: Kernel) -> AsyncIterator[WorkerManager]:
    await kernel.open()
    manager, task = await run_worker(kernel)
    try:
        yield manager
    finally:
        await manager.stop()
        await task
        await kernel.close()


# --- counters, histogram and gauges ------------------------------------------------------


async def test_success_retry_and_dead_are_counted(kernel: Kernel, worker: WorkerManager) -> None:
    del worker
    ids = [
        (await kernel.jobs.enqueue("ok", {})).job_id,
        (await kernel.jobs.enqueue("ok", {})).job_id,
        (await kernel.jobs.enqueue("flaky", {})).job_id,
        (await kernel.jobs.enqueue("broken", {})).job_id,
    ]
    statuses = [(await finished(kernel, job_id)).status for job_id in ids]
    assert statuses == ["succeeded", "succeeded", "succeeded", "dead"]
    await asyncio.sleep(0.5)  # a reaper pass refreshes the queue gauges
    samples = await exposition(kernel)

    assert value(samples, "jobs_enqueued_total", task="ok") == 2
    assert value(samples, "jobs_enqueued_total", task="flaky") == 1
    assert value(samples, "jobs_started_total", task="ok") == 2
    assert value(samples, "jobs_succeeded_total", task="ok") == 2
    assert value(samples, "jobs_started_total", task="flaky") == 2
    assert value(samples, "jobs_failed_total", task="flaky") == 1
    assert value(samples, "jobs_retried_total", task="flaky") == 1
    assert value(samples, "jobs_succeeded_total", task="flaky") == 1
    assert value(samples, "jobs_dead_total", task="flaky") == 0
    assert value(samples, "jobs_failed_total", task="broken") == 1
    assert value(samples, "jobs_dead_total", task="broken") == 1
    assert value(samples, "jobs_retried_total", task="broken") == 0
    assert value(samples, "jobs_duration_seconds_count", task="ok") == 2
    assert value(samples, "jobs_duration_seconds_count", task="flaky") == 2
    for priority in ("high", "normal", "low"):
        assert ("jobs_queue_depth", (("priority", priority),)) in samples
    assert value(samples, "jobs_queue_depth", priority="normal") == 0
    assert value(samples, "jobs_queue_jobs", state="dead") == 1
    assert ("jobs_oldest_waiting_seconds", ()) in samples
    assert value(samples, "jobs_oldest_waiting_seconds") == 0  # the worker keeps up


async def test_unknown_task_names_share_one_label(kernel: Kernel, worker: WorkerManager) -> None:
    del worker
    # A client without the registry (an enqueue-only process) accepts any name.
    from app_kernel.jobs import JobClient

    client = JobClient(kernel.job_queue, kernel.settings.jobs, metrics=kernel.metrics)
    job_ids = [(await client.enqueue(f"no-such-task-{n}", {})).job_id for n in range(3)]
    for job_id in job_ids:
        assert (await finished(kernel, job_id)).status == "dead"
    samples = await exposition(kernel)
    tasks = {dict(labels).get("task") for name, labels in samples if name == "jobs_dead_total"}
    assert tasks == {UNKNOWN_TASK}
    assert value(samples, "jobs_enqueued_total", task=UNKNOWN_TASK) == 3
    assert value(samples, "jobs_dead_total", task=UNKNOWN_TASK) == 3


# --- trace context -------------------------------------------------------------------------


def test_enqueue_stores_the_current_trace_id(kernel: Kernel) -> None:
    token = set_trace_id(TRACE_ID)
    try:
        spec = kernel.jobs._spec(
            "ok",
            {},
            job_id=None,
            priority="normal",
            user_id=None,
            timeout=None,
            max_attempts=None,
            delay_seconds=None,
            metadata={"k": 1},
            on_success=None,
            on_failure=None,
        )
    finally:
        reset_trace_id(token)
    assert '"trace_id":"' + TRACE_ID + '"' in (spec.metadata_json or "")
    assert '"k":1' in (spec.metadata_json or "")


@pytest.fixture
def traced_app(tmp_path: Path) -> FastAPI:
    registry = JobRegistry()

    @registry.task("traced")
    async def traced(payload: dict[str, Any], ctx: JobContext) -> None:
        ctx.log.info("handler via ctx.log")
        from app_kernel.observability.logging import get_logger

        get_logger("app.handler").info("handler via a module logger")

    app = FastAPI()
    settings = settings_for(tmp_path, jobs=JobSettings(**FAST))
    init_app_kernel(app, settings, registry)

    @app.post("/work")
    async def work() -> dict[str, str]:
        result = await kernel_of_app(app).jobs.enqueue("traced", {})
        return {"job_id": result.job_id}

    return app


async def test_trace_id_goes_from_request_to_job_logs(traced_app: FastAPI) -> None:
    stream = io.StringIO()
    async with serve(traced_app, log_stream=stream) as http:
        response = await http.post(
            "/work", headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
        )
        assert response.status_code == 200, response.text
        job_id = response.json()["job_id"]
        kernel = kernel_of_app(traced_app)
        info = await kernel.jobs.get_job(job_id)
        assert info is not None
        assert info.metadata == {"trace_id": TRACE_ID} or (
            info.to_dict().get("metadata", {}).get("trace_id") == TRACE_ID
        )
        manager, task = await run_worker(kernel)
        try:
            assert (await finished(kernel, job_id)).status == "succeeded"
        finally:
            await manager.stop()
            await task
    job_lines = [line for line in log_lines(stream) if line.get("job_id") == job_id]
    events = {line["event"]: line for line in job_lines}
    for event in ("job started", "handler via ctx.log", "job succeeded"):
        assert events[event]["trace_id"] == TRACE_ID, events
    module_lines = [
        line for line in log_lines(stream) if line.get("event") == "handler via a module logger"
    ]
    assert module_lines
    assert module_lines[0]["trace_id"] == TRACE_ID


# --- the worker's metrics port ---------------------------------------------------------------


@pytest.fixture
def server_kernel(tmp_path: Path) -> Kernel:
    observability = ObservabilitySettings(
        metrics_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest()
    )
    return Kernel(
        kernel_settings(
            tmp_path,
            None,
            None,
            observability=observability,
            features=FeatureSettings(protect_metrics="admin"),
        ),
        make_registry(),
    )


async def test_worker_metrics_port_serves_with_the_token(server_kernel: Kernel) -> None:
    kernel = server_kernel
    settings = kernel.settings
    server = WorkerMetricsServer(
        kernel.metrics,
        mode=settings.features.protect_metrics,
        token_hash=settings.observability.metrics_token_hash,
        port=0,
    ).start()
    await kernel.open()
    manager, task = await run_worker(kernel)
    try:
        job_id = (await kernel.jobs.enqueue("ok", {})).job_id
        await finished(kernel, job_id)
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with await asyncio.to_thread(httpx.AsyncClient) as http:  # loads certificates
            anonymous = await http.get(url)
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"] == "Bearer"
            wrong = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}x"})
            assert wrong.status_code == 401
            missing = await http.get(
                f"http://127.0.0.1:{server.port}/other",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert missing.status_code == 404
            response = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = await asyncio.to_thread(parse, response.text)
        assert value(samples, "jobs_succeeded_total", task="ok") == 1
    finally:
        await manager.stop()
        await task
        await kernel.close()
        await asyncio.to_thread(server.close)


@pytest.mark.parametrize("mode", ["internal", "none"])
async def test_worker_metrics_port_internal_and_public(server_kernel: Kernel, mode: str) -> None:
    server = WorkerMetricsServer(server_kernel.metrics, mode=mode, token_hash=None).start()
    try:
        async with await asyncio.to_thread(httpx.AsyncClient) as http:  # loads certificates
            response = await http.get(f"http://127.0.0.1:{server.port}/metrics")
        assert response.status_code == 200  # loopback is internal
    finally:
        await asyncio.to_thread(server.close)


async def test_worker_metrics_port_closes_silent_connections(server_kernel: Kernel) -> None:
    """Each connection holds a thread: one that never sends a request is closed."""
    server = WorkerMetricsServer(
        server_kernel.metrics, mode="none", token_hash=None, request_timeout_seconds=0.2
    ).start()

    def silent_connection_closed() -> bool:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
            return silent.recv(1) == b""  # the server hung up; a timeout raises instead

    try:
        assert await asyncio.to_thread(silent_connection_closed)
    finally:
        await asyncio.to_thread(server.close)


async def test_worker_metrics_port_answers_problems_head_and_405(server_kernel: Kernel) -> None:
    """Refusals are RFC 9457 problems as on the API, never http.server's HTML pages."""
    server = WorkerMetricsServer(
        server_kernel.metrics,
        mode="admin",
        token_hash=server_kernel.settings.observability.metrics_token_hash,
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(request)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            return answer

    try:
        async with await asyncio.to_thread(httpx.AsyncClient) as http:  # loads certificates
            anonymous = await http.get(f"{base}/metrics")
            elsewhere = await http.get(f"{base}/other", headers=auth)
            head = await http.head(f"{base}/metrics", headers=auth)
            got = await http.get(f"{base}/metrics", headers=auth)
            posted = await http.post(f"{base}/metrics", headers=auth)
            odd_method = await http.request("BREW", f"{base}/metrics", headers=auth)
        # Four words, a quote and a backslash: http.server's "Bad request syntax".
        garbage = await asyncio.to_thread(raw, b'GET /metrics "\\x HTTP/1.1\r\n\r\n')
    finally:
        await asyncio.to_thread(server.close)

    for response, status in ((anonymous, 401), (elsewhere, 404), (posted, 405), (odd_method, 501)):
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert posted.headers["allow"] == "GET, HEAD"
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    head_line, _, body = garbage.partition(b"\r\n\r\n")
    assert head_line.startswith(b"HTTP/1.0 400")
    assert b"application/problem+json" in head_line
    assert json.loads(body)["status"] == 400  # the quote and backslash are escaped


def test_worker_metrics_server_rejects_an_unknown_mode(server_kernel: Kernel) -> None:
    with pytest.raises(ValueError, match="protect_metrics"):
        WorkerMetricsServer(server_kernel.metrics, mode="open", token_hash=None)


WORKER_APP = """
from fastapi import FastAPI
from app_kernel import KernelSettings, init_app_kernel
from app_kernel.jobs import JobRegistry

registry = JobRegistry()


@registry.task("noop")
async def noop(payload, ctx):
    return None


app = FastAPI()
init_app_kernel(app, KernelSettings(debug=True), registry)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_cli_worker(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    (tmp_path / "worker_app.py").write_text(WORKER_APP)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "KERNEL_PROTECT_METRICS": "admin",
        "KERNEL_METRICS_TOKEN": TOKEN,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app_kernel",
            "worker",
            "worker_app:app",
            *("--concurrency", "2", "--metrics-port", str(port)),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_cli_worker_serves_metrics_port(tmp_path: Path) -> None:
    port = await asyncio.to_thread(_free_port)
    worker = await asyncio.to_thread(_start_cli_worker, tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        response: httpx.Response | None = None
        async with await asyncio.to_thread(httpx.AsyncClient) as http:  # loads certificates
            for _ in range(200):
                if worker.poll() is not None:
                    break
                try:
                    response = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert response is not None, "the worker's metrics port never answered"
            assert response.status_code == 200
            assert (await http.get(url)).status_code == 401
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(worker.communicate, timeout=20)
    assert worker.returncode == 0, stderr.decode(errors="replace")[-2000:]
