"""Request metrics queries on 1,000,000 stored rows, SQLite and PostgreSQL.

Usage::

    python benchmarks/bench_request_metrics.py [--rows 1000000] [--skip-postgres]

PostgreSQL comes from ``APP_KERNEL_BENCH_DATABASE_URL`` (default
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``); the script creates a
throwaway database next to it and drops it afterwards. SQLite uses a file in a
temporary directory; PostgreSQL is VACUUM ANALYZEd after the load, as
autovacuum would. Rows are generated in SQL (``generate_series`` /
a recursive CTE) over the last 23 hours: 50 routes, latencies 1 ms to 3 s with
a long tail, 5 % errors. It then times ``get_stats(hours=24)`` and a few
``get_recent`` queries (best of 3). No timed asserts: the numbers are for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app_kernel.db.engine import Database
from app_kernel.observability.request_metrics_store import RequestMetricsStore

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

_COLUMNS = (
    "timestamp, year, month, day, hour, method, path, route, status_code, error, "
    "latency_ms, client_ip, user_agent, trace_id"
)
# Row n's trace id is n in 32 hex digits, so a lookup can name one that exists.
TRACE_LOOKUP = f"{123_456:032x}"

SQLITE_FILL = f"""
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :rows),
r AS (
    SELECT n,
           strftime('%s', 'now') - (abs(random()) % 82800) AS ts,
           n % 50 AS route,
           CASE WHEN n % 20 = 0 THEN 500 + (n % 3) ELSE 200 END AS status,
           CASE WHEN n % 100 = 0 THEN 1000 + (abs(random()) % 2000)
                ELSE 1 + (abs(random()) % 200) END AS latency
    FROM g
)
INSERT INTO request_metrics ({_COLUMNS})
SELECT strftime('%Y-%m-%d %H:%M:%S', ts, 'unixepoch') || '.000000',
       CAST(strftime('%Y', ts, 'unixepoch') AS INTEGER),
       CAST(strftime('%m', ts, 'unixepoch') AS INTEGER),
       CAST(strftime('%d', ts, 'unixepoch') AS INTEGER),
       CAST(strftime('%H', ts, 'unixepoch') AS INTEGER),
       CASE WHEN route % 4 = 0 THEN 'POST' ELSE 'GET' END,
       '/api/v1/r' || route || '/' || n,
       '/api/v1/r' || route || '/{{id}}',
       status,
       CASE WHEN status >= 400 THEN 'Internal Server Error' END,
       latency + (n % 1000) / 1000.0,
       '203.0.113.' || (n % 250),
       'bench/1.0',
       printf('%032x', n)
FROM r
"""

PG_FILL = f"""
INSERT INTO request_metrics ({_COLUMNS})
SELECT ts,
       extract(year FROM ts AT TIME ZONE 'UTC'),
       extract(month FROM ts AT TIME ZONE 'UTC'),
       extract(day FROM ts AT TIME ZONE 'UTC'),
       extract(hour FROM ts AT TIME ZONE 'UTC'),
       CASE WHEN n % 200 < 50 THEN 'POST' ELSE 'GET' END,
       '/api/v1/r' || (n % 50) || '/' || n,
       '/api/v1/r' || (n % 50) || '/{{id}}',
       CASE WHEN n % 20 = 0 THEN 500 + (n % 3) ELSE 200 END,
       CASE WHEN n % 20 = 0 THEN 'Internal Server Error' END,
       CASE WHEN n % 100 = 0 THEN 1000 + random() * 2000 ELSE 1 + random() * 200 END,
       '203.0.113.' || (n % 250),
       'bench/1.0',
       lpad(to_hex(n), 32, '0')
FROM (
    SELECT n, now() - random() * interval '23 hours' AS ts
    FROM generate_series(1, :rows) AS n
) AS g
"""


async def best_of(label: str, call: Callable[[], Awaitable[Any]], runs: int = 3) -> None:
    times = []
    result: Any = None
    for _ in range(runs):
        start = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - start)
    size = result.get("total_requests") if isinstance(result, dict) else result
    size = len(size) if isinstance(size, list) else size
    print(f"  {label:<44} {min(times) * 1000:8.1f} ms  (result: {size})")


async def run(database: Database, rows: int, fill: str) -> None:
    name = database.url.get_backend_name()
    await database.open()
    try:
        start = time.perf_counter()
        async with database.engine.begin() as conn:
            await conn.execute(text(fill), {"rows": rows})
            if name != "postgresql":
                await conn.execute(text("ANALYZE"))
        if name == "postgresql":
            # What autovacuum does soon after a bulk load: statistics and the
            # visibility map (index-only scans).
            async with database.engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.execute(text("VACUUM ANALYZE request_metrics"))
        print(f"{name}: inserted {rows:,} rows in {time.perf_counter() - start:.1f} s")
        store = RequestMetricsStore(database)
        await best_of("get_stats(hours=24)", lambda: store.get_stats(hours=24))
        await best_of("get_stats(hours=1)", lambda: store.get_stats(hours=1))
        await best_of("get_recent(limit=100)", lambda: store.get_recent(limit=100))
        await best_of(
            "get_recent(path_prefix='/api/v1/r7/')",
            lambda: store.get_recent(limit=100, path_prefix="/api/v1/r7/"),
        )
        await best_of(
            "get_recent(min_latency_ms=1000)", lambda: store.get_recent(min_latency_ms=1000)
        )
        await best_of("get_recent(status_min=400)", lambda: store.get_recent(status_min=400))
        await best_of(
            "get_recent(offset=10000)", lambda: store.get_recent(limit=100, offset=10_000)
        )
        await best_of("get_recent(trace_id=...)", lambda: store.get_recent(trace_id=TRACE_LOOKUP))
        batch = [
            {
                "timestamp": time.time(),
                "method": "GET",
                "path": f"/bench/{n}",
                "route": "/bench/{n}",
                "status_code": 200,
                "latency_ms": 1.5,
                "trace_id": uuid.uuid4().hex,
            }
            for n in range(500)
        ]
        await best_of("insert_many(500 records)", lambda: store.insert_many(batch))
    finally:
        await database.close()


async def with_pg_database(url: str, rows: int) -> None:
    base = make_url(url)
    name = f"bench_rm_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            target = base.set(database=name).render_as_string(hide_password=False)
            await run(Database(target), rows, PG_FILL)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            await run(Database(url), args.rows, SQLITE_FILL)
    if not args.skip_postgres:
        url = os.environ.get("APP_KERNEL_BENCH_DATABASE_URL", DEFAULT_PG)
        await with_pg_database(url, args.rows)


if __name__ == "__main__":
    asyncio.run(main())
