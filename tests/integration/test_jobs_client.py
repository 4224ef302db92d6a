"""JobClient: fail-fast checks before anything is written, batches, status and dead jobs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from app_kernel import JobContext, JobRegistry, KernelSettings, ServiceConfig, create_service
from app_kernel import get_job_client as top_level_get_job_client
from app_kernel.cli import main as cli_main
from app_kernel.errors import KernelNotInitialized
from app_kernel.jobs import (
    InvalidJobError,
    JobClient,
    UnknownTaskError,
    get_job_client,
    get_worker_manager,
)
from app_kernel.kernel import Kernel
from app_kernel.settings import JobSettings, RedisSettings


async def send_email(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"sent": True}


@pytest.fixture
def registry() -> JobRegistry:
    registry = JobRegistry()
    registry.register("send_email", send_email, timeout=30.0, max_attempts=5)
    registry.register("plain", send_email)
    return registry


@pytest.fixture
def built_kernel(
    tmp_path: Path,
    coordination_url: str | None,
    request: pytest.FixtureRequest,
    registry: JobRegistry,
) -> Kernel:
    """Built in a sync fixture: construction (and Redis's first ping) is blocking work."""
    prefix = request.getfixturevalue("redis_key_prefix") if coordination_url else "app_kernel:"
    settings = KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        redis=RedisSettings(url=coordination_url, key_prefix=prefix),
        jobs=JobSettings(max_payload_bytes=1000, max_attempts=2, default_timeout_seconds=99.0),
    )
    return Kernel(settings, registry)


@pytest.fixture
async def kernel(built_kernel: Kernel) -> AsyncIterator[Kernel]:
    await built_kernel.open()
    try:
        yield built_kernel
    finally:
        await built_kernel.close()


async def _count_all(client: JobClient) -> int:
    status = await client.get_queue_status()
    return int(sum(status["queues"].values()) + status["scheduled"] + status["running"])


async def test_enqueue_returns_a_result_and_records_the_job(kernel: Kernel) -> None:
    client = kernel.jobs
    result = await client.enqueue(
        "send_email", {"email": "a@example.com"}, priority="high", user_id="u1"
    )
    assert result.task_name == "send_email"
    assert result.priority == "high"
    assert not result.deduplicated
    assert result.enqueued_at > 0
    info = await client.get_job(result.job_id)
    assert info is not None
    assert info.status == "queued"
    assert info.payload == {"email": "a@example.com"}
    assert info.user_id == "u1"
    assert info.max_attempts == 5  # the registry's metadata
    assert info.extra.get("timeout_seconds", 30.0) == 30.0
    status = await client.get_queue_status()
    assert status["queues"]["high"] == 1
    assert status["workers"] == []
    assert await client.get_job("missing") is None


async def test_attempts_and_timeout_precedence(kernel: Kernel) -> None:
    client = kernel.jobs
    explicit = await client.enqueue("send_email", {}, max_attempts=9, timeout=5.0)
    defaults = await client.enqueue("plain", {})
    info = await client.get_job(explicit.job_id)
    assert info is not None
    assert info.max_attempts == 9
    plain = await client.get_job(defaults.job_id)
    assert plain is not None
    assert plain.max_attempts == 2  # JobSettings.max_attempts
    if "timeout_seconds" in plain.extra:
        assert plain.extra["timeout_seconds"] == 99.0
        assert info.extra["timeout_seconds"] == 5.0


async def test_job_id_deduplicates_waiting_jobs(kernel: Kernel) -> None:
    first = await kernel.jobs.enqueue("send_email", {"n": 1}, job_id="order-42")
    second = await kernel.jobs.enqueue("send_email", {"n": 2}, job_id="order-42")
    assert first.job_id == second.job_id == "order-42"
    assert not first.deduplicated
    assert second.deduplicated


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("task", "payload", "options", "error", "text"),
    [
        ("nope", {}, {}, UnknownTaskError, "unknown task 'nope'"),
        ("send_email", {}, {"on_success": "nope"}, UnknownTaskError, "nope"),
        ("send_email", {"when": object()}, {}, InvalidJobError, "not JSON-serialisable"),
        ("send_email", {"x": float("nan")}, {}, InvalidJobError, "not JSON-serialisable"),
        ("send_email", ["not", "a", "dict"], {}, InvalidJobError, "expected a dict"),
        ("send_email", {"big": "x" * 2000}, {}, InvalidJobError, "max_payload_bytes"),
        ("send_email", {}, {"priority": "urgent"}, InvalidJobError, "priority"),
        ("send_email", {}, {"job_id": "x" * 129}, InvalidJobError, "job_id"),
        ("send_email", {}, {"job_id": "bad\nid"}, InvalidJobError, "job_id"),
        ("send_email", {}, {"job_id": ""}, InvalidJobError, "job_id"),
        ("send_email", {}, {"timeout": 0}, InvalidJobError, "timeout"),
        ("send_email", {}, {"max_attempts": 0}, InvalidJobError, "max_attempts"),
        ("send_email", {}, {"delay_seconds": -1}, InvalidJobError, "delay_seconds"),
        ("send_email", {}, {"metadata": {"x": {1, 2}}}, InvalidJobError, "metadata"),
        ("send_email", {}, {"metadata": [("k", "v")]}, InvalidJobError, "metadata: expected"),
        ("send_email", {}, {"metadata": {"big": "x" * 2000}}, InvalidJobError, "metadata is"),
        ("send_email", _nested(5000), {}, InvalidJobError, "payload is nested too deeply"),
        ("send_email", {}, {"user_id": "u" * 256}, InvalidJobError, "user_id"),
        ("send_email", {}, {"user_id": "a\x00b"}, InvalidJobError, "user_id"),
        ("send_email", {}, {"user_id": ""}, InvalidJobError, "user_id"),
    ],
)
async def test_bad_enqueues_fail_before_anything_is_written(
    kernel: Kernel,
    task: str,
    payload: Any,
    options: dict[str, Any],
    error: type[Exception],
    text: str,
) -> None:
    with pytest.raises(error, match=text):
        await kernel.jobs.enqueue(task, payload, **options)
    assert await _count_all(kernel.jobs) == 0


async def test_job_id_of_128_printable_characters_is_accepted(kernel: Kernel) -> None:
    result = await kernel.jobs.enqueue("send_email", {}, job_id="é" * 128)
    assert result.job_id == "é" * 128


async def test_kernel_tasks_are_never_refused_as_unknown(kernel: Kernel) -> None:
    result = await kernel.jobs.enqueue("kernel:request_metrics", {"path": "/"})
    assert result.task_name == "kernel:request_metrics"


async def test_a_client_without_registry_accepts_any_task(kernel: Kernel) -> None:
    producer = JobClient(kernel.job_queue, kernel.settings.jobs)
    result = await producer.enqueue("defined_elsewhere", {})
    assert (await producer.get_job(result.job_id)) is not None
    with pytest.raises(InvalidJobError):
        await producer.enqueue("defined_elsewhere", {"x": object()})


async def test_enqueue_many_checks_everything_then_writes_once(kernel: Kernel) -> None:
    client = kernel.jobs
    with pytest.raises(InvalidJobError):
        await client.enqueue_many("send_email", [{"n": 1}, {"n": object()}])
    assert await _count_all(client) == 0
    results = await client.enqueue_many(
        "send_email", [{"user_id": "1"}, {"user_id": "2"}, {"user_id": "3"}], priority="low"
    )
    assert len(results) == 3
    assert len({r.job_id for r in results}) == 3
    assert all(r.priority == "low" for r in results)
    assert (await client.get_queue_status())["queues"]["low"] == 3
    assert await client.enqueue_many("send_email", []) == []


async def test_cancel_a_waiting_job(kernel: Kernel) -> None:
    result = await kernel.jobs.enqueue("send_email", {}, delay_seconds=60)
    assert (await kernel.jobs.get_job(result.job_id)).status == "scheduled"  # type: ignore[union-attr]
    assert await kernel.jobs.cancel(result.job_id)
    assert (await kernel.jobs.get_job(result.job_id)).status == "cancelled"  # type: ignore[union-attr]
    assert not await kernel.jobs.cancel(result.job_id)
    assert not await kernel.jobs.cancel("missing")


async def _two_dead_jobs(kernel: Kernel) -> list[str]:
    """Enqueue two jobs of one attempt each and fail both: their ids."""
    queue = kernel.job_queue
    ids = [(await kernel.jobs.enqueue("plain", {"n": n}, max_attempts=1)).job_id for n in range(2)]
    for claimed in await queue.claim("test-worker", 2, lease_seconds=5):
        outcome = await queue.fail(
            claimed.job_id,
            claimed.token,
            error="boom",
            traceback=None,
            retry_delay_seconds=1.0,
            dead_ttl_seconds=60,
        )
        assert outcome == "dead"
    return ids


async def test_dead_jobs_can_be_listed_retried_and_purged(kernel: Kernel) -> None:
    client = kernel.jobs
    ids = await _two_dead_jobs(kernel)
    assert {d.job_id for d in await client.list_dead()} == set(ids)
    assert await client.retry_dead(ids[0]) == 1
    assert (await client.get_job(ids[0])).status == "queued"  # type: ignore[union-attr]
    assert await client.purge_dead() == 1
    assert await client.list_dead() == []
    assert await client.get_job(ids[1]) is None


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": 10**20}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 10**20}, "offset"),
        ({"limit": True}, "limit"),
    ],
)
async def test_list_dead_refuses_a_page_out_of_range(
    kernel: Kernel, options: dict[str, Any], text: str
) -> None:
    """SQLite read a limit of 0 or below as no limit and Redis as the whole list;
    numbers past 64 bits raised OverflowError (SQLite) or a Lua error (Redis)."""
    ids = await _two_dead_jobs(kernel)
    assert len(await kernel.jobs.list_dead()) == len(ids)
    with pytest.raises(InvalidJobError, match=text):
        await kernel.jobs.list_dead(**options)


def test_accessors_need_a_kernel() -> None:
    with pytest.raises(KernelNotInitialized, match="get_job_client"):
        get_job_client()
    with pytest.raises(KernelNotInitialized, match="get_worker_manager"):
        get_worker_manager()


# --- create_service(tasks=...) and the CLI ----------------------------------------------


def _service(tmp_path: Path) -> Any:
    router = APIRouter()

    @router.post("/orders")
    async def create_order(data: dict[str, Any]) -> dict[str, Any]:
        result = await top_level_get_job_client().enqueue("process_order", data)
        return {"job_id": result.job_id}

    async def process_order(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        return {"status": "done"}

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(json.dumps({"data_dir": str(tmp_path)}))
    return create_service(
        name="orders",
        routers=[router],
        tasks={"process_order": process_order},
        config=ServiceConfig(debug=True),
        manifest=manifest,
    )


@pytest.fixture
def service(tmp_path: Path) -> Any:
    return _service(tmp_path)


async def test_create_service_registers_tasks_and_routes_enqueue(service: Any) -> None:
    kernel = service.state.app_kernel
    assert "process_order" in kernel.registry
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post("/api/v1/orders", json={"order_id": "123"})
        assert response.status_code == 200, response.text
        job_id = response.json()["job_id"]
        info = await kernel.jobs.get_job(job_id)
        assert info is not None
        assert info.task_name == "process_order"
        assert info.payload == {"order_id": "123"}
        with pytest.raises(UnknownTaskError):
            await get_job_client().enqueue("not_a_task", {})


def test_jobs_cli_status_dead_retry_and_purge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "jobs_cli_app.py"
    (tmp_path / "manifest.yaml").write_text(json.dumps({"data_dir": str(tmp_path)}))
    module.write_text(
        "from app_kernel import ServiceConfig, create_service\n"
        "async def work(payload, ctx):\n    return None\n"
        "app = create_service(name='cli', routers=[], tasks={'work': work},"
        f" config=ServiceConfig(debug=True), manifest={str(tmp_path / 'manifest.yaml')!r})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli_main(["jobs", "--app", "jobs_cli_app:app", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["queues"] == {"high": 0, "normal": 0, "low": 0}
    assert status["workers"] == []
    assert cli_main(["jobs", "--app", "jobs_cli_app:app", "dead"]) == 0
    assert capsys.readouterr().out == ""
    assert cli_main(["jobs", "--app", "jobs_cli_app:app", "retry", "--all"]) == 0
    assert "requeued 0" in capsys.readouterr().out
    assert cli_main(["jobs", "--app", "jobs_cli_app:app", "purge", "missing-id"]) == 1
    assert cli_main(["jobs", "--app", "jobs_cli_app:app", "purge"]) == 2  # neither id nor --all
