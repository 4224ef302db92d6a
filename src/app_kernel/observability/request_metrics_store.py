"""Where request metrics are kept: the ``request_metrics`` table and its queries.

:class:`RequestMetricsStore` writes a batch with one INSERT (executemany) and answers
the spec's queries (:meth:`~RequestMetricsStore.get_recent`,
:meth:`~RequestMetricsStore.get_stats`) in SQL, on SQLite and PostgreSQL.
Percentiles use ``percentile_cont`` on PostgreSQL up to 100,000 rows; on SQLite,
and on larger PostgreSQL windows, each is read with
``ORDER BY latency_ms LIMIT 2 OFFSET k`` on the ``(latency_ms, timestamp)``
index and interpolated the same way, so both databases answer the same values.

The worker stores batches through the kernel task :data:`STORE_TASK`
(:func:`store_batch_task`), registered by ``kernel.py``; the task writes to the
database of the kernel opened last in the process (:func:`bind_database`).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    case,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)

from app_kernel._runtime import current_kernel
from app_kernel.db.tables import kernel_metadata
from app_kernel.db.types import UtcDateTime, storable_text
from app_kernel.errors import BackendUnavailable, KernelError, PermanentError
from app_kernel.observability.logging import get_logger
from app_kernel.observability.request_metrics import as_records

if TYPE_CHECKING:
    from app_kernel.db.engine import Database

__all__ = (
    "MAX_QUERY_LIMIT",
    "STORE_TASK",
    "RequestMetricsStore",
    "bind_database",
    "request_metrics_table",
    "store_batch_task",
    "unbind_database",
)

STORE_TASK = "kernel:request_metrics.store"
"""The kernel task a worker runs to store one batch (``fields`` and ``rows``)."""
MAX_QUERY_LIMIT = 1000
"""Most records one :meth:`RequestMetricsStore.get_recent` call returns."""
PRUNE_EVERY_SECONDS = 3600.0
"""How often (per worker process) :func:`store_batch_task` also prunes old rows."""

_TOP_ENDPOINTS = 10
PERCENTILE_CONT_MAX_ROWS = 100_000
"""Up to this many rows PostgreSQL uses ``percentile_cont`` (a sort of the window);
above it both databases walk the latency index, which answers the same values."""
_log = get_logger("app_kernel.request_metrics")

request_metrics_table = Table(
    "request_metrics",
    kernel_metadata,
    Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("timestamp", UtcDateTime(), nullable=False),
    Column("year", SmallInteger(), nullable=False),
    Column("month", SmallInteger(), nullable=False),
    Column("day", SmallInteger(), nullable=False),
    Column("hour", SmallInteger(), nullable=False),
    Column("method", String(16), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("route", String(512), nullable=False),
    Column("query_params", JSON()),
    Column("request_id", String(255)),
    Column("status_code", SmallInteger(), nullable=False),
    Column("error", String(512)),
    Column("latency_ms", Float(), nullable=False),
    Column("client_ip", String(64)),
    Column("user_agent", String(512)),
    Column("referer", String(512)),
    Column("user_id", String(255)),
    Column("workspace_id", String(255)),
    Column("country", String(2)),
    Column("trace_id", String(32)),
    # Covering indexes: the stats read only index entries, never the rows.
    Index("ix_request_metrics_timestamp", "timestamp", "latency_ms", "status_code"),
    Index("ix_request_metrics_latency", "latency_ms", "timestamp"),
    Index("ix_request_metrics_route", "route", "method", "timestamp", "latency_ms", "status_code"),
    Index("ix_request_metrics_status", "status_code", "timestamp"),
    # Finds the requests of one trace.
    Index("ix_request_metrics_trace", "trace_id"),
)
"""The ``request_metrics`` table, created by ``Database.open()`` with the other kernel tables."""

_RECORD_FIELDS = tuple(c.name for c in request_metrics_table.columns if c.name != "id")


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _row_of(record: dict[str, Any]) -> dict[str, Any]:
    """A table row from a captured record (``timestamp`` as epoch seconds or datetime)."""
    stamp = record["timestamp"]
    if isinstance(stamp, int | float):
        stamp = datetime.fromtimestamp(stamp, UTC)
    elif isinstance(stamp, str):
        stamp = _as_utc(datetime.fromisoformat(stamp))
    row = {name: _storable(record.get(name)) for name in _RECORD_FIELDS}
    row["timestamp"] = stamp
    for part in ("year", "month", "day", "hour"):
        if row[part] is None:
            row[part] = getattr(stamp, part)
    return row


def _storable(value: Any) -> Any:
    """Text values made storable by both databases (see :func:`storable_text`): a
    request to ``/api/%00`` would otherwise lose its whole batch on PostgreSQL."""
    return storable_text(value) if isinstance(value, str) else value


def _to_dict(row: Any) -> dict[str, Any]:
    data = dict(row)
    data["timestamp"] = data["timestamp"].isoformat()
    return data


def _refused_data(exc: SQLAlchemyError) -> bool:
    """True when the database refused the values themselves (a wrong type, a
    missing required field), which no retry can fix; False for a failing database."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    # A StatementError that is no driver error: a value the column type could not bind.
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


class RequestMetricsStore:
    """Request metrics on the kernel's SQL database (SQLite or PostgreSQL).

    Args:
        database: the database holding ``request_metrics``; the current kernel's
            when None (read on each call, so a store built early still works).
    """

    def __init__(self, database: Database | None = None) -> None:
        self._database = database

    @property
    def database(self) -> Database:
        if self._database is not None:
            return self._database
        return current_kernel("RequestMetricsStore()").database

    # --- writes -----------------------------------------------------------------------

    async def insert_many(self, records: list[dict[str, Any]]) -> int:
        """Store ``records`` with one INSERT statement (executemany) in one transaction.

        Raises:
            ValueError: a record cannot be a row (no timestamp, a value its column
                cannot hold, a required field missing); nothing is stored.
            BackendUnavailable: the database failed.
        """
        if not records:
            return 0
        try:
            rows = [_row_of(record) for record in records]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            msg = f"request metrics: a record has no usable timestamp: {type(exc).__name__}"
            raise ValueError(msg) from exc
        try:
            async with self.database.engine.begin() as conn:
                # One cached INSERT run by the driver's executemany in one transaction
                # (asyncpg pipelines it): 10x faster than a literal multi-row
                # VALUES, which SQLAlchemy compiles afresh for every batch.
                await conn.execute(insert(request_metrics_table), rows)
        except SQLAlchemyError as exc:
            if _refused_data(exc):
                msg = f"request metrics: the database refused a record: {type(exc).__name__}"
                raise ValueError(msg) from exc
            msg = f"request metrics: could not store {len(rows)} records: {type(exc).__name__}"
            raise BackendUnavailable(msg) from exc
        return len(rows)

    async def prune(self, retention_days: float) -> int:
        """Delete records older than ``retention_days``; answer how many went."""
        cutoff = datetime.now(UTC) - timedelta(days=retention_days)
        statement = delete(request_metrics_table).where(request_metrics_table.c.timestamp < cutoff)
        try:
            async with self.database.engine.begin() as conn:
                result = await conn.execute(statement)
        except SQLAlchemyError as exc:
            msg = f"request metrics: could not prune: {type(exc).__name__}"
            raise BackendUnavailable(msg) from exc
        return int(result.rowcount or 0)

    # --- reads ------------------------------------------------------------------------

    async def get_recent(
        self,
        limit: int = 100,
        path_prefix: str | None = None,
        min_latency_ms: float | None = None,
        status_min: int | None = None,
        offset: int = 0,
        *,
        status_max: int | None = None,
        method: str | None = None,
        route: str | None = None,
        user_id: str | None = None,
        workspace_id: str | None = None,
        trace_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Records matching every given filter, newest first.

        Args:
            limit: at most this many, clamped to 1..1000.
            path_prefix: only paths starting with this text.
            min_latency_ms: only requests that took at least this long.
            status_min: only status codes at least this (400: errors).
            offset: skip this many matching records first.
            status_max: only status codes at most this.
            method: only this HTTP method.
            route: only this route template (``/items/{item_id}``).
            user_id: only this user's requests.
            workspace_id: only requests on this workspace.
            trace_id: only the requests of this W3C trace.
            since: only records at or after this time (naive means UTC).
            until: only records before this time (naive means UTC).

        Raises:
            BackendUnavailable: the database failed.
        """
        table = request_metrics_table
        statement = select(table)
        if path_prefix:
            prefix = _escape_like(storable_text(path_prefix))  # as paths were stored
            statement = statement.where(table.c.path.like(prefix + "%", escape="\\"))
        if min_latency_ms is not None:
            statement = statement.where(table.c.latency_ms >= min_latency_ms)
        if status_min is not None:
            statement = statement.where(table.c.status_code >= status_min)
        if status_max is not None:
            statement = statement.where(table.c.status_code <= status_max)
        equal = {
            "method": method,
            "route": route,
            "user_id": user_id,
            "workspace_id": workspace_id,
            "trace_id": trace_id,
        }
        for name, value in equal.items():
            if value is not None:
                statement = statement.where(table.c[name] == storable_text(value))
        if since is not None:
            statement = statement.where(table.c.timestamp >= _as_utc(since))
        if until is not None:
            statement = statement.where(table.c.timestamp < _as_utc(until))
        statement = (
            statement.order_by(table.c.timestamp.desc(), table.c.id.desc())
            .limit(min(max(int(limit), 1), MAX_QUERY_LIMIT))
            .offset(max(int(offset), 0))
        )
        rows = await self._fetch(statement)
        return [_to_dict(row) for row in rows]

    async def get_stats(self, hours: float = 24) -> dict[str, Any]:
        """Aggregates over the last ``hours``.

        Returns:
            ``hours``, ``since`` (ISO 8601), ``total_requests``, ``error_count``
            (status >= 400), ``error_rate`` (0..1), ``avg_latency_ms``,
            ``p50_latency_ms``, ``p95_latency_ms``, ``p99_latency_ms`` (None
            without data), ``slow_endpoints`` (the 10 routes with the highest
            average latency) and ``error_endpoints`` (the 10 routes with most
            errors), each ``{"method", "route", "count", "avg_latency_ms",
            "max_latency_ms", "error_count"}``.

        Raises:
            BackendUnavailable: the database failed.
        """
        table = request_metrics_table
        since = datetime.now(UTC) - timedelta(hours=hours)
        recent = table.c.timestamp >= since
        is_error = case((table.c.status_code >= 400, 1), else_=0)
        totals = select(
            func.count().label("total"),
            func.avg(table.c.latency_ms).label("avg"),
            func.coalesce(func.sum(is_error), 0).label("errors"),
        ).where(recent)

        # One pass per route (route templates are few: unmatched paths share one);
        # both top lists are picked from it.
        per_route = (
            select(
                table.c.method,
                table.c.route,
                func.count().label("count"),
                func.avg(table.c.latency_ms).label("avg_latency_ms"),
                func.max(table.c.latency_ms).label("max_latency_ms"),
                func.coalesce(func.sum(is_error), 0).label("error_count"),
            )
            .where(recent)
            .group_by(table.c.route, table.c.method)
        )

        def endpoint(row: Any) -> dict[str, Any]:
            return {
                "method": row["method"],
                "route": row["route"],
                "count": int(row["count"]),
                "avg_latency_ms": _round(row["avg_latency_ms"]),
                "max_latency_ms": _round(row["max_latency_ms"]),
                "error_count": int(row["error_count"] or 0),
            }

        try:
            async with self.database.engine.connect() as conn:
                total_row = (await conn.execute(totals)).one()
                total = int(total_row.total or 0)
                percentiles = await self._percentiles(conn, since, total)
                routes = [endpoint(row) for row in (await conn.execute(per_route)).mappings()]
        except SQLAlchemyError as exc:
            msg = f"request metrics: could not compute stats: {type(exc).__name__}"
            raise BackendUnavailable(msg) from exc
        error_count = int(total_row.errors or 0)
        slow = sorted(routes, key=lambda e: (-(e["avg_latency_ms"] or 0), e["route"], e["method"]))
        failing = sorted(
            (e for e in routes if e["error_count"]),
            key=lambda e: (-e["error_count"], e["route"], e["method"]),
        )

        return {
            "hours": hours,
            "since": since.isoformat(),
            "total_requests": total,
            "error_count": error_count,
            "error_rate": round(error_count / total, 6) if total else 0.0,
            "avg_latency_ms": _round(total_row.avg),
            "p50_latency_ms": percentiles[0],
            "p95_latency_ms": percentiles[1],
            "p99_latency_ms": percentiles[2],
            "slow_endpoints": slow[:_TOP_ENDPOINTS],
            "error_endpoints": failing[:_TOP_ENDPOINTS],
        }

    async def _percentiles(self, conn: Any, since: datetime, total: int) -> list[float | None]:
        table = request_metrics_table
        fractions = (0.5, 0.95, 0.99)
        if total == 0:
            return [None for _ in fractions]
        if conn.dialect.name == "postgresql" and total <= PERCENTILE_CONT_MAX_ROWS:
            statement = select(
                *(
                    func.percentile_cont(fraction).within_group(table.c.latency_ms.asc())
                    for fraction in fractions
                )
            ).where(table.c.timestamp >= since)
            row = (await conn.execute(statement)).one()
            return [_round(value) for value in row]
        # The k-th smallest latency by walking the (latency_ms, timestamp) index from
        # the nearer end (p95/p99 read a few entries from the top), interpolated as
        # percentile_cont does.
        values: list[float | None] = []
        for fraction in fractions:
            position = fraction * (total - 1)
            low = math.floor(position)
            wanted = 2 if position > low else 1
            if low < total / 2:
                statement = (
                    select(table.c.latency_ms)
                    .where(table.c.timestamp >= since)
                    .order_by(table.c.latency_ms.asc())
                    .limit(wanted)
                    .offset(low)
                )
                found = [float(v) for v in (await conn.execute(statement)).scalars()]
            else:
                # From the top: the entries at low (and low+1) counted from the end.
                top_offset = total - 1 - (low + wanted - 1)
                statement = (
                    select(table.c.latency_ms)
                    .where(table.c.timestamp >= since)
                    .order_by(table.c.latency_ms.desc())
                    .limit(wanted)
                    .offset(top_offset)
                )
                found = sorted(float(v) for v in (await conn.execute(statement)).scalars())
            if not found:
                values.append(None)
                continue
            value = found[0]
            if len(found) == 2:
                value += (found[1] - found[0]) * (position - low)
            values.append(_round(value))
        return values

    async def _fetch(self, statement: Any) -> list[Any]:
        try:
            async with self.database.engine.connect() as conn:
                return list((await conn.execute(statement)).mappings().all())
        except SQLAlchemyError as exc:
            msg = f"request metrics: could not query records: {type(exc).__name__}"
            raise BackendUnavailable(msg) from exc


# --- the worker's task ----------------------------------------------------------------

_bound: list[Database] = []
_last_prune: dict[int, float] = {}


def bind_database(database: Database) -> Database:
    """Make ``database`` the one :func:`store_batch_task` writes to (the kernel's
    ``open()`` calls this); the last bound wins until it is unbound."""
    _bound.append(database)
    return database


async def unbind_database(database: Database) -> None:
    """Undo :func:`bind_database` (the kernel's ``close()``)."""
    for index in range(len(_bound) - 1, -1, -1):
        if _bound[index] is database:
            del _bound[index]
            break


def _records_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of a batch: ``fields`` and ``rows``, as the recorder sends them, or
    ``records`` (dicts), the form earlier builds sent: batches queued before an
    upgrade are still stored.

    Raises:
        ValueError: the payload is neither.
    """
    rows = payload.get("rows")
    if rows is None:
        return list(payload.get("records") or [])
    fields = payload.get("fields")
    if (
        not isinstance(fields, list)
        or not all(isinstance(name, str) for name in fields)
        or not isinstance(rows, list)
        or not all(isinstance(row, list) for row in rows)
    ):
        msg = f"{STORE_TASK}: expected 'fields' (a list of names) and 'rows' (a list of lists)"
        raise ValueError(msg)
    unknown = sorted(set(fields) - set(_RECORD_FIELDS))
    if unknown:
        msg = f"{STORE_TASK}: unknown fields {unknown}; known: {list(_RECORD_FIELDS)}"
        raise ValueError(msg)
    try:
        return as_records(fields, rows)
    except ValueError as exc:
        msg = f"{STORE_TASK}: a row does not match 'fields' ({len(fields)} names): {exc}"
        raise ValueError(msg) from exc


async def store_batch_task(payload: dict[str, Any], ctx: Any) -> dict[str, int]:
    """Store one batch of request records (one INSERT, one transaction); prune old rows
    at most once an hour per process.

    Raises:
        KernelError: no kernel is open in this process.
        PermanentError: the batch is malformed, or the database refused its
            values; retrying cannot help, so the job goes dead at once.
        BackendUnavailable: the database failed (the job is retried).
    """
    if not _bound:
        msg = f"{STORE_TASK}: no kernel database is open in this worker process"
        raise KernelError(msg)
    database = _bound[-1]
    store = RequestMetricsStore(database)
    try:
        stored = await store.insert_many(_records_of(payload))
    except ValueError as exc:
        # A malformed batch stays malformed: no retry, the job goes dead at once.
        raise PermanentError(str(exc)) from exc
    result = {"stored": stored}
    retention = payload.get("retention_days")
    now = time.monotonic()
    last = _last_prune.get(id(database))
    if retention and (last is None or now - last >= PRUNE_EVERY_SECONDS):
        _last_prune[id(database)] = now
        try:
            result["pruned"] = await store.prune(float(retention))
        except BackendUnavailable as exc:
            _log.warning("request metrics: pruning failed", error=str(exc))
    return result
