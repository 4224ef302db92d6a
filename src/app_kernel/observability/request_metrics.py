"""Request metrics: one record per HTTP request, stored in the background.

:class:`RequestMetricsObserver` (told of each request by the request-context
middleware) captures, after each response, the spec's fields: method, path,
route template, query parameters (credential values redacted), request id,
status, error detail, server latency, real client IP, user agent, referer,
user and workspace ids, country and the timestamp with its year/month/day/hour.
It hands the record to a :class:`RequestMetricsBuffer` and never waits: a full
buffer drops the new record and counts it in ``request_metrics_dropped_total``.

:class:`RequestMetricsRecorder` (one per kernel) owns the buffer and a flusher
task that, every ``flush_interval_seconds``, enqueues the buffered records in
batches of ``batch_size`` as the kernel task ``kernel:request_metrics.store``;
a worker stores each batch with one INSERT in one transaction. When ``max_queued_batches``
low-priority jobs already wait (no worker keeps up), the oldest batch this
process still has waiting is cancelled to make room, so the queue keeps the
newest records; when it has none left to cancel (other processes filled the
queue), or the queue fails, the new batch is dropped instead. Either way the
batch is counted in ``request_metrics_batches_dropped_total``, and the flush
ends with one warning per reason giving how many batches and records it dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus

from app_kernel.observability.logging import get_logger
from app_kernel.observability.redaction import REDACTED, is_secret_key
from app_kernel.observability.tracing import current_trace_id

if TYPE_CHECKING:
    from app_kernel.observability.metrics import Metrics
    from app_kernel.observability.request_outcome import RequestOutcome
    from app_kernel.settings import RequestMetricsSettings
    from app_kernel.types import Scope

__all__ = (
    "BATCH_PRIORITY",
    "RECORD_FIELDS",
    "RequestMetricsBuffer",
    "RequestMetricsObserver",
    "RequestMetricsRecorder",
    "as_records",
    "capture_query_params",
    "redact_url_query",
)

DROPPED = "request_metrics.dropped"
BATCHES_DROPPED = "request_metrics.batches_dropped"
BATCHES_QUEUED = "request_metrics.batches_queued"
BUFFERED = "request_metrics.buffered"
BATCH_PRIORITY = "low"
"""Priority of the store jobs; the backlog check counts this queue."""

_MAX_TEXT = 512
_MAX_PATH = 1024
_MAX_ID = 255
_MAX_PARAMS = 50
_MAX_PARAM_KEY = 128
_MAX_PARAM_VALUE = 256
# Query keys whose values are redacted on top of the logging module's credential words.
_EXTRA_SECRET_PARTS = frozenset({"key", "code", "sig", "auth", "otp", "session", "sid"})
_log = get_logger("app_kernel.request_metrics")


def _secret_param(name: str) -> bool:
    if is_secret_key(name):
        return True
    lowered = name.lower()
    parts = [p for p in "".join(c if c.isalnum() else " " for c in lowered).split() if p]
    return any(part in _EXTRA_SECRET_PARTS for part in parts)


def capture_query_params(query_string: bytes) -> dict[str, Any] | None:
    """The query parameters as ``{key: value}`` (a list for repeated keys), credential
    values (``token``, ``password``, ``key``, ``secret``, ``code``, ``signature``...)
    replaced by ``[redacted]``; at most 50 keys, values cut to 256 characters."""
    if not query_string:
        return None
    params: dict[str, Any] = {}
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    for raw_key, raw_value in pairs:
        key = raw_key[:_MAX_PARAM_KEY]
        # The whole key is judged: a cut could drop the word that makes it secret.
        value = REDACTED if _secret_param(raw_key) else raw_value[:_MAX_PARAM_VALUE]
        if key in params:
            existing = params[key]
            if isinstance(existing, list):
                if len(existing) < _MAX_PARAMS:
                    existing.append(value)
            else:
                params[key] = [existing, value]
        elif len(params) < _MAX_PARAMS:
            params[key] = value
    return params or None


def redact_url_query(url: str) -> str:
    """``url`` with the values of credential-named query keys replaced by ``[redacted]``.

    For the ``Referer``: a browser calling its own origin's API sends the
    page's full address, and a page such as a password-reset link carries its
    token in the query. Keys are judged as :func:`capture_query_params` judges
    them (percent-decoded); every other byte is kept as sent.
    """
    base, mark, rest = url.partition("?")
    if not mark:
        return url
    query, hash_mark, fragment = rest.partition("#")
    pairs = query.split("&")
    for index, pair in enumerate(pairs):
        name, equals, value = pair.partition("=")
        if equals and value and _secret_param(unquote_plus(name)):
            pairs[index] = f"{name}={REDACTED}"
    return f"{base}?{'&'.join(pairs)}{hash_mark}{fragment}"


_CAPTURED_HEADERS = frozenset({b"cf-ipcountry", b"user-agent", b"referer"})


def _captured_headers(scope: Scope) -> dict[bytes, str]:
    """The first value of each captured header, in one pass over the headers."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        if key in _CAPTURED_HEADERS and key not in found:
            found[key] = value.decode("latin-1")
    return found


_last_hour: tuple[int, tuple[int, int, int, int]] = (-1, (0, 0, 0, 0))


def _hour_of(stamp: float) -> tuple[int, int, int, int]:
    """UTC (year, month, day, hour) of an epoch time; worked out once per hour."""
    global _last_hour
    hours = int(stamp // 3600)
    cached_hours, parts = _last_hour
    if cached_hours != hours:
        moment = datetime.fromtimestamp(hours * 3600, UTC)
        parts = (moment.year, moment.month, moment.day, moment.hour)
        _last_hour = (hours, parts)
    return parts


def _redacted(url: str | None) -> str | None:
    return None if url is None else redact_url_query(url)


def _cut(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _error_detail(status: int, body: bytes | None) -> str:
    """The ``detail`` of a problem+json body (first 512 characters), else the phrase."""
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            detail = data.get("detail")
            if isinstance(detail, str) and detail:
                return detail[:_MAX_TEXT]
    return _status_phrase(status)


Row = Sequence[Any]
"""One captured request: its values in the order of :data:`RECORD_FIELDS`."""

RECORD_FIELDS = (
    "timestamp",
    "year",
    "month",
    "day",
    "hour",
    "method",
    "path",
    "route",
    "query_params",
    "request_id",
    "status_code",
    "error",
    "latency_ms",
    "client_ip",
    "user_agent",
    "referer",
    "user_id",
    "workspace_id",
    "country",
    "trace_id",
)
"""The fields of a record, in the order a row holds them."""


def as_records(fields: Sequence[str], rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Rows as ``{field: value}`` records (for the store task and for readers)."""
    return [dict(zip(fields, row, strict=True)) for row in rows]


class RequestMetricsBuffer:
    """A bounded FIFO of rows; :meth:`add` never blocks and drops when full."""

    def __init__(self, capacity: int, metrics: Metrics | None = None) -> None:
        self.capacity = capacity
        self.metrics = metrics
        self._records: deque[Row] = deque()
        self.dropped = 0
        """Records dropped because the buffer was full (this process)."""

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: Row) -> bool:
        """Keep ``record``; False (and counted) when the buffer is full."""
        if len(self._records) >= self.capacity:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.increment(DROPPED)
            return False
        self._records.append(record)
        return True

    def take(self, count: int) -> list[Row]:
        """Remove and answer up to ``count`` of the oldest records."""
        records = self._records
        taken = min(count, len(records))
        return [records.popleft() for _ in range(taken)]


Enqueue = Callable[[dict[str, Any]], Awaitable[Any]]
Backlog = Callable[[], Awaitable[int]]
Cancel = Callable[[str], Awaitable[bool]]


class RequestMetricsRecorder:
    """The buffer and the flusher task moving its records to the job queue.

    Args:
        settings: ``observability.request_metrics``.
        metrics: where drops are counted.
        enqueue: enqueues one store job with the given payload; its result's
            ``job_id``, when it has one, lets the batch be cancelled later.
        backlog: how many store jobs wait in the queue now.
        cancel: cancels a waiting job by id (True when it was still waiting);
            without it a full queue drops the new batch instead of the oldest.
    """

    def __init__(
        self,
        settings: RequestMetricsSettings,
        metrics: Metrics | None,
        *,
        enqueue: Enqueue,
        backlog: Backlog,
        cancel: Cancel | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.buffer = RequestMetricsBuffer(settings.buffer_size, metrics)
        self._enqueue = enqueue
        self._backlog = backlog
        self._cancel = cancel
        # (job id, records) of this process's latest batches, oldest first.
        self._queued: deque[tuple[str, int]] = deque(maxlen=max(1, settings.max_queued_batches))
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.batches_queued = 0
        self.batches_dropped = 0
        # reason -> [batches, records] dropped by the flush under way, logged at its end.
        self._drops: dict[str, list[int]] = {}
        if metrics is not None:
            metrics.describe(DROPPED, "Request records dropped because the buffer was full.")
            metrics.describe(BATCHES_DROPPED, "Request record batches dropped (queue backlog).")
            metrics.describe(BATCHES_QUEUED, "Request record batches handed to the job queue.")
            metrics.describe(BUFFERED, "Request records waiting in this process's buffer.")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the flusher task (in the running event loop)."""
        if self.running:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="request-metrics-flusher")

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - bounded shutdown
        """Stop the flusher, then flush what is left (for at most ``timeout`` seconds)."""
        task, self._task = self._task, None
        self._stop.set()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush()

    async def _run(self) -> None:
        interval = self.settings.flush_interval_seconds
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self.flush()
            except Exception as exc:
                _log.warning("request metrics: flush failed", error=repr(exc))

    async def flush(self) -> int:
        """Enqueue the records buffered when called, in batches; answer how many batches went.

        Records captured while the batches are being enqueued wait for the next
        flush: under load, chasing them would turn one flush into an endless
        stream of small batches, each a job of its own.
        """
        buffer = self.buffer
        left = len(buffer)
        if self.metrics is not None:
            self.metrics.gauge(BUFFERED, left)
        if not left:
            return 0
        try:
            return await self._send_batches(left)
        finally:
            self._report_drops()

    async def _send_batches(self, left: int) -> int:
        buffer = self.buffer
        try:
            waiting = await self._backlog()
        except Exception as exc:
            _log.warning("request metrics: queue status failed", error=repr(exc))
            waiting = 0
        sent = 0
        settings = self.settings
        while left > 0:
            batch = buffer.take(min(settings.batch_size, left))
            if not batch:  # a flush running beside this one took them
                break
            left -= settings.batch_size
            if waiting >= settings.max_queued_batches:
                waiting -= await self._drop_oldest()
            if waiting >= settings.max_queued_batches:
                self._drop_batch(len(batch), "queue backlog")
                continue
            payload = {
                "fields": RECORD_FIELDS,
                "rows": batch,
                "retention_days": settings.retention_days,
            }
            try:
                queued = await self._enqueue(payload)
            except Exception as exc:
                self._drop_batch(len(batch), repr(exc))
                continue
            job_id = getattr(queued, "job_id", None)
            if isinstance(job_id, str):
                self._queued.append((job_id, len(batch)))
            waiting += 1
            sent += 1
            self.batches_queued += 1
            if self.metrics is not None:
                self.metrics.increment(BATCHES_QUEUED)
        return sent

    async def _drop_oldest(self) -> int:
        """Cancel this process's oldest batch still waiting; 1 if one was, else 0."""
        if self._cancel is None:
            return 0
        while self._queued:
            job_id, size = self._queued.popleft()
            try:
                cancelled = await self._cancel(job_id)
            except Exception as exc:
                _log.warning("request metrics: cancelling a batch failed", error=repr(exc))
                return 0
            if cancelled:
                self._drop_batch(size, "queue backlog (oldest batch)")
                return 1
            # Already taken by a worker: try the next one.
        return 0

    def _drop_batch(self, size: int, reason: str) -> None:
        self.batches_dropped += 1
        if self.metrics is not None:
            self.metrics.increment(BATCHES_DROPPED)
        tally = self._drops.setdefault(reason, [0, 0])
        tally[0] += 1
        tally[1] += size

    def _report_drops(self) -> None:
        """One warning per reason for the batches one flush dropped, not one per batch:
        with no worker running, a flush can drop a batch every second for hours."""
        drops, self._drops = self._drops, {}
        for reason, (batches, records) in drops.items():
            _log.warning(
                "request metrics: batches dropped", batches=batches, records=records, reason=reason
            )


RouteOf = Callable[["Scope"], str]
RecorderOf = Callable[["Scope"], RequestMetricsRecorder]


class RequestMetricsObserver:
    """Capture one record per HTTP request into the app kernel's recorder.

    A :class:`~app_kernel.observability.request_outcome.RequestObserver`.

    Args:
        recorder_of: finds the recorder for a request's scope (the app's kernel's).
        route_of: the matched route's template for a scope.
        exclude_paths: paths not recorded (that path or anything below it).
    """

    wants_error_body = True

    def __init__(
        self,
        *,
        recorder_of: RecorderOf,
        route_of: RouteOf,
        exclude_paths: tuple[str, ...] = (),
    ) -> None:
        self.recorder_of = recorder_of
        self.route_of = route_of
        self.exact = frozenset(p.rstrip("/") or "/" for p in exclude_paths)
        self.prefixes = tuple((p.rstrip("/") + "/") for p in exclude_paths if p.rstrip("/"))

    def excluded(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)

    def started(self, scope: Scope) -> None:
        """Nothing to do before the response."""

    def finished(self, scope: Scope, outcome: RequestOutcome) -> None:
        if self.excluded(scope["path"]):
            return
        try:
            self._record(
                scope,
                outcome.started_at,
                outcome.status,
                outcome.seconds * 1000.0,
                outcome.error_body,
            )
        except Exception as exc:
            _log.warning("request metrics: capture failed", error=repr(exc))

    def _record(
        self,
        scope: Scope,
        stamp: float,
        status: int,
        latency_ms: float,
        error_body: bytes | None,
    ) -> None:
        recorder = self.recorder_of(scope)
        state = scope.get("state") or {}
        user = state.get("app_kernel_user")
        user_id = getattr(user, "id", None) if user else None
        workspace = (scope.get("path_params") or {}).get("workspace_id")
        headers = _captured_headers(scope)
        country = headers.get(b"cf-ipcountry")
        if country is not None:
            country = country.strip().upper()
            if len(country) != 2 or not country.isalpha() or not country.isascii():
                country = None
        year, month, day, hour = _hour_of(stamp)
        # In the order of RECORD_FIELDS: a row, not a dict, is half the JSON to send.
        row = (
            stamp,
            year,
            month,
            day,
            hour,
            str(scope["method"])[:16],
            str(scope["path"])[:_MAX_PATH],
            self.route_of(scope)[:_MAX_TEXT],
            capture_query_params(scope.get("query_string", b"")),
            _cut(state.get("request_id"), _MAX_ID),
            status,
            _error_detail(status, error_body) if status >= 400 else None,
            round(latency_ms * 1000) / 1000,  # to the microsecond
            _cut(state.get("client_ip"), 64),
            _cut(headers.get(b"user-agent"), _MAX_TEXT),
            _cut(_redacted(headers.get(b"referer")), _MAX_TEXT),
            _cut(None if user_id is None else str(user_id), _MAX_ID),
            _cut(None if workspace is None else str(workspace), _MAX_ID),
            country,
            current_trace_id(),  # the request's, from its traceparent or made for it
        )
        recorder.buffer.add(row)
