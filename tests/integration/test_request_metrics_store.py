"""RequestMetricsStore on SQLite and PostgreSQL, and the batch writer through a real worker."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from _log_capture import configured_logging
from app_kernel import init_app_kernel
from app_kernel.db.engine import Database
from app_kernel.errors import KernelError, PermanentError
from app_kernel.jobs import WorkerManager
from app_kernel.kernel import Kernel
from app_kernel.observability import RequestMetricsStore, request_metrics_store
from app_kernel.observability.request_metrics import (
    RECORD_FIELDS,
    RequestMetricsRecorder,
    as_records,
)
from app_kernel.settings import (
    JobSettings,
    KernelSettings,
    ObservabilitySettings,
    RequestMetricsSettings,
)

NOW = datetime.now(UTC).replace(microsecond=0)


def record(
    path: str,
    route: str,
    latency_ms: float,
    status: int = 200,
    *,
    method: str = "GET",
    ago: timedelta = timedelta(minutes=5),
    **fields: Any,
) -> dict[str, Any]:
    stamp = NOW - ago
    values: dict[str, Any] = {
        "timestamp": stamp.timestamp(),
        "method": method,
        "path": path,
        "route": route,
        "query_params": None,
        "request_id": None,
        "status_code": status,
        "error": None if status < 400 else "failed",
        "latency_ms": latency_ms,
        "client_ip": "203.0.113.1",
        "user_agent": "ua",
        "referer": None,
        "user_id": None,
        "workspace_id": None,
        "country": None,
        "trace_id": None,
    }
    values.update(fields)
    return values


DATA = [
    record("/api/a/1", "/api/a/{id}", 10, ago=timedelta(minutes=7), user_id="u1"),
    record("/api/a/2", "/api/a/{id}", 20, ago=timedelta(minutes=6), workspace_id="w1"),
    record("/api/a/3", "/api/a/{id}", 30, ago=timedelta(minutes=5)),
    record(
        "/api/a/4",
        "/api/a/{id}",
        40,
        ago=timedelta(minutes=4),
        query_params={"q": "x"},
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    ),
    record("/api/b", "/api/b", 100, 500, method="POST", ago=timedelta(minutes=3)),
    record("/api/b", "/api/b", 200, 500, method="POST", ago=timedelta(minutes=2)),
    record("/api/c_1", "/api/c_1", 1500, 404, ago=timedelta(minutes=1)),
    record("/api/a/old", "/api/a/{id}", 9999, ago=timedelta(hours=48)),
]


@pytest.fixture
async def store(sql_database_url: str) -> AsyncIterator[RequestMetricsStore]:
    database = Database(sql_database_url)
    await database.open()
    try:
        store = RequestMetricsStore(database)
        assert await store.insert_many(DATA) == len(DATA)
        yield store
    finally:
        await database.close()


async def test_recent_is_newest_first_with_every_field(store: RequestMetricsStore) -> None:
    rows = await store.get_recent()
    assert [r["path"] for r in rows] == [
        "/api/c_1",
        "/api/b",
        "/api/b",
        "/api/a/4",
        "/api/a/3",
        "/api/a/2",
        "/api/a/1",
        "/api/a/old",
    ]
    newest = rows[0]
    assert newest["status_code"] == 404
    assert newest["latency_ms"] == 1500
    assert newest["timestamp"] == (NOW - timedelta(minutes=1)).isoformat()
    stamp = NOW - timedelta(minutes=1)
    assert (newest["year"], newest["month"], newest["day"], newest["hour"]) == (
        stamp.year,
        stamp.month,
        stamp.day,
        stamp.hour,
    )
    assert rows[3]["query_params"] == {"q": "x"}


async def test_recent_filters(store: RequestMetricsStore) -> None:
    async def paths(**filters: Any) -> list[str]:
        return [r["path"] for r in await store.get_recent(**filters)]

    assert await paths(path_prefix="/api/b") == ["/api/b", "/api/b"]
    # LIKE wildcards in the prefix are literal.
    assert await paths(path_prefix="/api/c_") == ["/api/c_1"]
    assert await paths(path_prefix="/api/c%") == []
    assert await paths(min_latency_ms=1000) == ["/api/c_1", "/api/a/old"]
    assert await paths(status_min=400) == ["/api/c_1", "/api/b", "/api/b"]
    assert await paths(status_min=400, status_max=499) == ["/api/c_1"]
    assert await paths(method="POST", limit=1) == ["/api/b"]
    assert await paths(route="/api/a/{id}", limit=2, offset=1) == ["/api/a/3", "/api/a/2"]
    assert await paths(user_id="u1") == ["/api/a/1"]
    assert await paths(workspace_id="w1") == ["/api/a/2"]
    assert await paths(trace_id="4bf92f3577b34da6a3ce929d0e0e4736") == ["/api/a/4"]
    assert await paths(since=NOW - timedelta(minutes=2, seconds=30)) == ["/api/c_1", "/api/b"]
    assert await paths(until=NOW - timedelta(hours=1)) == ["/api/a/old"]


async def test_stats_on_a_known_data_set(store: RequestMetricsStore) -> None:
    stats = await store.get_stats(hours=24)

    assert stats["total_requests"] == 7
    assert stats["error_count"] == 3
    assert stats["error_rate"] == pytest.approx(3 / 7, abs=1e-6)
    assert stats["avg_latency_ms"] == pytest.approx(1900 / 7, abs=1e-3)
    # percentile_cont over [10, 20, 30, 40, 100, 200, 1500]
    assert stats["p50_latency_ms"] == pytest.approx(40)
    assert stats["p95_latency_ms"] == pytest.approx(1110)
    assert stats["p99_latency_ms"] == pytest.approx(1422)
    assert [(e["method"], e["route"]) for e in stats["slow_endpoints"]] == [
        ("GET", "/api/c_1"),
        ("POST", "/api/b"),
        ("GET", "/api/a/{id}"),
    ]
    assert stats["slow_endpoints"][1] == {
        "method": "POST",
        "route": "/api/b",
        "count": 2,
        "avg_latency_ms": 150.0,
        "max_latency_ms": 200.0,
        "error_count": 2,
    }
    assert [(e["route"], e["error_count"]) for e in stats["error_endpoints"]] == [
        ("/api/b", 2),
        ("/api/c_1", 1),
    ]


async def test_stats_by_walking_the_latency_index_match(
    store: RequestMetricsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large windows on PostgreSQL take the index walk SQLite always takes."""
    monkeypatch.setattr(request_metrics_store, "PERCENTILE_CONT_MAX_ROWS", 0)
    stats = await store.get_stats(hours=24)
    assert stats["p50_latency_ms"] == pytest.approx(40)
    assert stats["p95_latency_ms"] == pytest.approx(1110)
    assert stats["p99_latency_ms"] == pytest.approx(1422)


async def test_stats_of_an_empty_window(store: RequestMetricsStore) -> None:
    stats = await store.get_stats(hours=0.001)
    assert stats["total_requests"] == 0
    assert stats["error_rate"] == 0.0
    assert stats["avg_latency_ms"] is None
    assert stats["p50_latency_ms"] is None
    assert stats["slow_endpoints"] == []


async def test_prune_deletes_old_records(store: RequestMetricsStore) -> None:
    assert await store.prune(1) == 1
    assert len(await store.get_recent()) == 7
    assert await store.prune(1) == 0


async def test_text_no_database_can_hold_does_not_cost_the_batch(
    store: RequestMetricsStore,
) -> None:
    """A request to ``/api/%00`` has NUL in its path, which PostgreSQL refuses, and
    a lone surrogate has no UTF-8 form: such text is stored with U+FFFD, and the
    rest of its batch with it."""
    batch = [
        record(
            "/api/\x00x",
            "/api/{name}",
            5,
            ago=timedelta(0),
            user_agent="ua\x00",
            workspace_id="w\ud800",
        ),
        record("/api/fine", "/api/fine", 6, ago=timedelta(0)),
    ]
    assert await store.insert_many(batch) == 2
    stored = {r["latency_ms"]: r for r in await store.get_recent(limit=2)}
    assert stored[5]["path"] == "/api/\ufffdx"
    assert stored[5]["user_agent"] == "ua\ufffd"
    assert stored[5]["workspace_id"] == "w\ufffd"
    assert stored[6]["path"] == "/api/fine"
    # Searching with the text as the request had it finds the record.
    (found,) = await store.get_recent(path_prefix="/api/\x00", workspace_id="w\ud800")
    assert found["latency_ms"] == 5


# --- the batch writer through a real worker ---------------------------------------------


FAST_JOBS = JobSettings(
    lease_seconds=1.0,
    heartbeat_seconds=0.3,
    reap_interval_seconds=0.3,
    shutdown_grace_seconds=2.0,
    worker_count=2,
)


def worker_app(tmp_path: Path, database_url: str, **request_metrics: Any) -> FastAPI:
    values: dict[str, Any] = {"enabled": True, "flush_interval_seconds": 0.05, "batch_size": 3}
    values.update(request_metrics)
    settings = KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        database_url=database_url,
        jobs=FAST_JOBS,
        observability=ObservabilitySettings(request_metrics=RequestMetricsSettings(**values)),
    )
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    init_app_kernel(app, settings)
    return app


@pytest.fixture
def app(tmp_path: Path, sql_database_url: str) -> FastAPI:
    return worker_app(tmp_path, sql_database_url)


def stored_form(captured: dict[str, Any]) -> dict[str, Any]:
    expected = dict(captured)
    expected["timestamp"] = datetime.fromtimestamp(captured["timestamp"], UTC).isoformat()
    return expected


async def test_a_worker_stores_exactly_what_was_captured(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with app.router.lifespan_context(app):
        kernel: Kernel = app.state.app_kernel
        captured: list[dict[str, Any]] = []
        buffer = kernel.request_metrics.buffer
        add = buffer.add

        def keep(row: Sequence[Any]) -> bool:
            captured.extend(as_records(RECORD_FIELDS, [row]))
            return add(row)

        monkeypatch.setattr(buffer, "add", keep)
        manager = WorkerManager(kernel, handle_signals=False)
        task = asyncio.create_task(manager.start())
        try:
            transport = httpx.ASGITransport(app=app, client=("198.51.100.3", 1000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                for n in range(8):
                    await http.get(f"/items/{n}", params={"n": n, "token": "t"})
                await http.get("/items/x")
            store = RequestMetricsStore(kernel.database)
            deadline = time.monotonic() + 15
            rows: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                rows = await store.get_recent(limit=50)
                if len(rows) >= 9:
                    break
                await asyncio.sleep(0.05)
        finally:
            await manager.stop()
            await task

    assert len(captured) == 9
    stored = sorted(
        ({k: v for k, v in row.items() if k != "id"} for row in rows),
        key=lambda r: (r["timestamp"], r["path"]),
    )
    expected = sorted((stored_form(c) for c in captured), key=lambda r: (r["timestamp"], r["path"]))
    assert stored == expected
    assert expected[0]["query_params"] == {"n": "0", "token": "[redacted]"}
    assert {r["status_code"] for r in stored} == {200, 422}
    assert kernel.request_metrics.batches_queued >= 3


async def test_a_worker_buries_a_malformed_batch_at_once_and_goes_on(app: FastAPI) -> None:
    """One attempt, no retries, dead with the reason; the next batch is stored."""
    async with app.router.lifespan_context(app):
        kernel: Kernel = app.state.app_kernel
        bad = await kernel.jobs.enqueue(
            request_metrics_store.STORE_TASK,
            {"fields": ["path", "pasword"], "rows": [["/a", "x"]]},
            priority="low",
        )
        manager = WorkerManager(kernel, handle_signals=False)
        task = asyncio.create_task(manager.start())
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                await http.get("/items/1")
            store = RequestMetricsStore(kernel.database)
            deadline = time.monotonic() + 15
            rows: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not rows:
                rows = await store.get_recent(limit=5)
                await asyncio.sleep(0.05)
            job = await kernel.jobs.get_job(bad.job_id)
        finally:
            await manager.stop()
            await task
    assert [r["path"] for r in rows] == ["/items/1"]
    assert job is not None
    assert (job.status, job.attempt) == ("dead", 1)
    assert "unknown fields ['pasword']" in (job.error or "")


async def test_without_a_worker_queued_batches_are_bounded(tmp_path: Path) -> None:
    app = await asyncio.to_thread(
        worker_app,
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        flush_interval_seconds=3600.0,
        batch_size=2,
        max_queued_batches=2,
    )
    async with app.router.lifespan_context(app):
        kernel = app.state.app_kernel
        recorder: RequestMetricsRecorder = kernel.request_metrics
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for n in range(10):
                await http.get(f"/items/{n}")
        enqueued: list[str] = []
        enqueue = recorder._enqueue

        async def spy(payload: dict[str, Any]) -> Any:
            queued = await enqueue(payload)
            enqueued.append(queued.job_id)
            return queued

        recorder._enqueue = spy
        assert await recorder.flush() == 5
        assert recorder.batches_dropped == 3
        assert len(recorder.buffer) == 0
        status = await kernel.jobs.get_queue_status()
        assert status["queues"]["low"] == 2
        # The oldest batches made room: the two left hold the newest records.
        jobs = [await kernel.jobs.get_job(job_id) for job_id in enqueued]
        assert [job.status for job in jobs if job] == ["cancelled"] * 3 + ["queued"] * 2
        kept = [
            record["path"]
            for job in jobs[3:]
            if job
            for record in as_records(job.payload["fields"], job.payload["rows"])
        ]
        assert kept == [f"/items/{n}" for n in range(6, 10)]
        exposition, _ = kernel.metrics.render()
    assert "request_metrics_batches_dropped_total 3.0" in exposition.decode()


async def test_a_failing_queue_drops_the_batch_and_keeps_going() -> None:
    async def enqueue(payload: dict[str, Any]) -> None:
        raise ConnectionError("queue down")

    async def backlog() -> int:
        raise ConnectionError("queue down")

    recorder = RequestMetricsRecorder(
        RequestMetricsSettings(enabled=True, batch_size=2), None, enqueue=enqueue, backlog=backlog
    )
    for n in range(5):
        recorder.buffer.add({"n": n})
    assert await recorder.flush() == 0
    assert recorder.batches_dropped == 3
    assert len(recorder.buffer) == 0


async def test_a_full_queue_drops_the_new_batch_when_none_of_ours_still_waits() -> None:
    """The oldest batches of this process were already taken by workers: nothing to cancel."""
    asked: list[str] = []
    ids = iter(range(100))

    class Queued:
        def __init__(self) -> None:
            self.job_id = f"job-{next(ids)}"

    async def enqueue(payload: dict[str, Any]) -> Queued:
        return Queued()

    async def backlog() -> int:
        return 0

    async def cancel(job_id: str) -> bool:
        asked.append(job_id)
        return False  # running or finished: not ours to drop any more

    recorder = RequestMetricsRecorder(
        RequestMetricsSettings(enabled=True, batch_size=1, max_queued_batches=2),
        None,
        enqueue=enqueue,
        backlog=backlog,
        cancel=cancel,
    )
    for n in range(4):
        recorder.buffer.add({"n": n})
    assert await recorder.flush() == 2
    assert asked == ["job-0", "job-1"]  # each tried once, oldest first
    assert recorder.batches_dropped == 2


async def test_records_captured_during_a_flush_wait_for_the_next_one() -> None:
    """Under load a flush must not chase new records with one small batch after another."""
    payloads: list[dict[str, Any]] = []

    async def backlog() -> int:
        return 0

    recorder: RequestMetricsRecorder

    async def enqueue(payload: dict[str, Any]) -> None:
        payloads.append(payload)
        recorder.buffer.add({"n": "late"})  # a request finishing while the batch is sent

    recorder = RequestMetricsRecorder(
        RequestMetricsSettings(enabled=True, batch_size=2), None, enqueue=enqueue, backlog=backlog
    )
    for n in range(5):
        recorder.buffer.add({"n": n})
    assert await recorder.flush() == 3
    assert [[r["n"] for r in p["rows"]] for p in payloads] == [[0, 1], [2, 3], [4]]
    assert len(recorder.buffer) == 3  # the late ones, for the next flush
    assert await recorder.flush() == 2
    assert [r["n"] for r in payloads[3]["rows"]] == ["late", "late"]


async def test_two_flushes_at_once_send_each_record_once() -> None:
    payloads: list[dict[str, Any]] = []

    async def backlog() -> int:
        await asyncio.sleep(0)  # both flushes count their records before either takes any
        return 0

    async def enqueue(payload: dict[str, Any]) -> None:
        payloads.append(payload)
        await asyncio.sleep(0)

    recorder = RequestMetricsRecorder(
        RequestMetricsSettings(enabled=True, batch_size=2), None, enqueue=enqueue, backlog=backlog
    )
    for n in range(5):
        recorder.buffer.add({"n": n})
    sent = await asyncio.gather(recorder.flush(), recorder.flush())
    assert sum(sent) == len(payloads)
    assert all(p["rows"] for p in payloads)  # no empty batch
    assert sorted(r["n"] for p in payloads for r in p["rows"]) == [0, 1, 2, 3, 4]


async def test_one_warning_per_flush_however_many_batches_it_drops() -> None:
    async def enqueue(payload: dict[str, Any]) -> None:
        raise ConnectionError("queue down")

    async def backlog() -> int:
        return 0

    recorder = RequestMetricsRecorder(
        RequestMetricsSettings(enabled=True, batch_size=2), None, enqueue=enqueue, backlog=backlog
    )
    with configured_logging(level="INFO", fmt="json") as out:
        for n in range(5):
            recorder.buffer.add({"n": n})
        assert await recorder.flush() == 0
        recorder.buffer.add({"n": 5})
        assert await recorder.flush() == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    drops = [line for line in lines if line["event"] == "request metrics: batches dropped"]
    reason = repr(ConnectionError("queue down"))
    assert [(d["batches"], d["records"], d["reason"]) for d in drops] == [
        (3, 5, reason),
        (1, 1, reason),
    ]
    assert recorder.batches_dropped == 4


async def test_the_store_task_takes_rows_and_the_older_records_form(sql_database_url: str) -> None:
    """Rows are what the recorder sends; dict records (earlier builds) still store."""
    database = Database(sql_database_url)
    await database.open()
    request_metrics_store.bind_database(database)
    try:
        new, old = DATA[0], DATA[1]
        fields = list(new)
        payload = {"fields": fields, "rows": [[new[name] for name in fields]]}
        assert await request_metrics_store.store_batch_task(payload, None) == {"stored": 1}
        assert await request_metrics_store.store_batch_task({"records": [old]}, None) == {
            "stored": 1
        }
        rows = await RequestMetricsStore(database).get_recent()
        assert sorted(r["path"] for r in rows) == ["/api/a/1", "/api/a/2"]
        assert {r["user_id"] for r in rows} == {"u1", None}
    finally:
        await request_metrics_store.unbind_database(database)
        await database.close()


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ({"fields": "path", "rows": [["/a"]]}, "expected 'fields'"),
        ({"fields": ["path"], "rows": [("/a",), "x"]}, "expected 'fields'"),
        ({"fields": ["path", "pasword"], "rows": [["/a", "x"]]}, "unknown fields ['pasword']"),
        ({"fields": ["path", "method"], "rows": [["/a"]]}, "does not match 'fields' (2 names)"),
        ({"records": [{"path": "/a", "method": "GET"}]}, "has no usable timestamp"),
        ({"records": [{**DATA[0], "timestamp": "yesterday"}]}, "has no usable timestamp"),
        ({"records": [DATA[0], {**DATA[1], "method": None}]}, "the database refused a record"),
    ],
)
async def test_a_malformed_batch_fails_for_good_with_what_is_wrong(
    sql_database_url: str, payload: dict[str, Any], complaint: str
) -> None:
    database = Database(sql_database_url)
    await database.open()
    request_metrics_store.bind_database(database)
    try:
        with pytest.raises(PermanentError, match=re.escape(complaint)):
            await request_metrics_store.store_batch_task(payload, None)
        assert await RequestMetricsStore(database).get_recent() == []
    finally:
        await request_metrics_store.unbind_database(database)
        await database.close()


async def make_table_without(url: str, column: str, rows: list[dict[str, Any]]) -> None:
    """Create ``request_metrics`` as an older build would have, without ``column``."""
    from sqlalchemy import Column, MetaData, Table
    from sqlalchemy.ext.asyncio import create_async_engine

    old_metadata = MetaData()
    current = request_metrics_store.request_metrics_table
    old = Table(
        "request_metrics",
        old_metadata,
        *(
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in current.columns
            if c.name != column
        ),
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(old_metadata.create_all)
            if rows:
                await conn.execute(old.insert(), rows)
    finally:
        await engine.dispose()


async def test_opening_adds_the_columns_an_older_kernel_did_not_make(
    sql_database_url: str,
) -> None:
    """A request_metrics table made before trace_id existed gains the column, empty."""
    from sqlalchemy import inspect

    old_row = request_metrics_store._row_of(DATA[0])
    del old_row["trace_id"]
    await make_table_without(sql_database_url, "trace_id", [old_row])
    database = Database(sql_database_url)
    await database.open()
    try:
        async with database.engine.connect() as conn:
            names = await conn.run_sync(
                lambda sync: [c["name"] for c in inspect(sync).get_columns("request_metrics")]
            )
        assert "trace_id" in names
        store = RequestMetricsStore(database)
        assert await store.insert_many([DATA[3]]) == 1
        rows = await store.get_recent()
        assert [(r["path"], r["trace_id"]) for r in rows] == [
            ("/api/a/4", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("/api/a/1", None),
        ]
        await database.open()  # a second start finds nothing to add
    finally:
        await database.close()


async def test_opening_refuses_a_table_without_a_required_column(sql_database_url: str) -> None:
    """A required column cannot be added to existing rows: the error names it."""
    await make_table_without(sql_database_url, "method", [])
    database = Database(sql_database_url)
    try:
        with pytest.raises(
            KernelError, match="'request_metrics' lacks the required column 'method'"
        ):
            await database.open()
    finally:
        await database.close()


def test_a_row_holds_every_column_of_the_table() -> None:
    """The capture's field list and the table agree (a new column needs both)."""
    assert sorted(RECORD_FIELDS) == sorted(request_metrics_store._RECORD_FIELDS)


async def test_processes_starting_together_add_a_column_once(tmp_path: Path) -> None:
    """Processes opening an older build's SQLite file at once (the API and its
    worker; here four engines, each with its own connection) all start: the first
    adds the column, the others wait for its write lock and find it. Without
    BEGIN IMMEDIATE the others failed with "database is locked"."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    first = Database(url)
    await first.open()  # every kernel table as it is now...
    await first.close()
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:  # ...but request_metrics as an older build made it
            await conn.exec_driver_sql("DROP TABLE request_metrics")
    finally:
        await engine.dispose()
    await make_table_without(url, "trace_id", [])
    databases = [Database(url) for _ in range(4)]
    try:
        await asyncio.gather(*(database.open() for database in databases))
    finally:
        for database in databases:
            await database.close()
