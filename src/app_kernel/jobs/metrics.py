"""Job metrics through the kernel's facade, and the worker's ``/metrics`` server.

Series (``task`` is a registered task name; any other name is ``__unknown__``,
so a client or worker never creates a label per stray name)::

    jobs_enqueued_total{task}          jobs written by JobClient (not deduplicated ones)
    jobs_started_total{task}           attempts whose handler started
    jobs_succeeded_total{task}         attempts that completed
    jobs_failed_total{task}            attempts recorded as failed (retrying or dead)
    jobs_retried_total{task}           failed attempts that will run again
    jobs_dead_total{task}              jobs that failed for good
    jobs_duration_seconds{task}        handler run time of each attempt (histogram)
    jobs_abandoned_threads_total{task} plain-function handlers left running in their thread
    jobs_queue_depth{priority}         jobs waiting, per priority (gauge)
    jobs_queue_jobs{state}             scheduled (incl. retrying), running, dead (gauge)
    jobs_oldest_waiting_seconds        how long the longest-waiting runnable job has waited

The gauges are refreshed by each worker from ``queue.status()`` every
``jobs.reap_interval_seconds``; they are queue-wide figures, so their
multiprocess mode is ``livemostrecent`` (not summed over workers). Attempts
whose lease expired are failed by the reaper in the backend and are not
counted in ``jobs_failed_total``. The oldest waiting job is measured from
when it could first run (its scheduled time, else its enqueue time): a value
that keeps growing means no worker is taking jobs.

:class:`WorkerMetricsServer` serves the exposition of a worker process over
plain HTTP on its own thread (see its docstring for the protection rule).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from app_kernel.jobs.registry import JobRegistry, kernel_tasks
from app_kernel.observability.logging import get_logger
from app_kernel.observability.metrics_routes import is_internal_address

if TYPE_CHECKING:
    from app_kernel.observability.metrics import Metrics

__all__ = ("UNKNOWN_TASK", "JobMetrics", "WorkerMetricsServer", "describe_job_metrics")

UNKNOWN_TASK = "__unknown__"
_ALLOWED = "GET, HEAD"
_log = get_logger("app_kernel.jobs.metrics")

_HELP = {
    "jobs.enqueued": "Jobs enqueued (deduplicated enqueues excluded), by task.",
    "jobs.started": "Job attempts whose handler started, by task.",
    "jobs.succeeded": "Job attempts that completed, by task.",
    "jobs.failed": "Job attempts recorded as failed (retrying or dead), by task.",
    "jobs.retried": "Failed job attempts that will be retried, by task.",
    "jobs.dead": "Jobs moved to dead after their last failed attempt, by task.",
    "jobs.duration_seconds": "Handler run time of each job attempt in seconds, by task.",
    "jobs.abandoned_threads": "Plain-function handlers abandoned in their thread, by task.",
    "jobs.queue_depth": "Jobs waiting to run, by priority (refreshed by workers).",
    "jobs.queue_jobs": "Scheduled, running and dead jobs (refreshed by workers).",
    "jobs.oldest_waiting_seconds": "Seconds the longest-waiting runnable job has waited.",
}


def describe_job_metrics(metrics: Metrics) -> None:
    """Give the job series their help texts (before first use)."""
    for name, text in _HELP.items():
        metrics.describe(name, text)


class JobMetrics:
    """The job series of one kernel's :class:`Metrics`, with bounded task labels."""

    def __init__(self, metrics: Metrics, registry: JobRegistry | None) -> None:
        self.metrics = metrics
        self.registry = registry
        describe_job_metrics(metrics)

    def task_label(self, task_name: str) -> str:
        """``task_name`` when it is registered (app or kernel task), else ``__unknown__``."""
        if task_name in kernel_tasks or (self.registry is not None and task_name in self.registry):
            return task_name
        return UNKNOWN_TASK

    def count(self, event: str, task_name: str, value: float = 1) -> None:
        """Add to ``jobs_<event>_total{task}``; never raises."""
        try:
            self.metrics.increment(f"jobs.{event}", value, {"task": self.task_label(task_name)})
        except Exception as exc:  # metrics must never fail a job
            _log.warning("recording a job metric failed", metric=event, error=repr(exc))

    def duration(self, task_name: str, seconds: float) -> None:
        try:
            self.metrics.histogram(
                "jobs.duration_seconds", seconds, {"task": self.task_label(task_name)}
            )
        except Exception as exc:
            _log.warning("recording a job metric failed", metric="duration", error=repr(exc))

    def queue_status(self, status: Mapping[str, Any]) -> None:
        """Set the queue gauges from a ``queue.status()`` reply."""
        gauge = self.metrics.gauge
        for priority, depth in dict(status.get("queues") or {}).items():
            gauge("jobs.queue_depth", int(depth), {"priority": priority}, mode="livemostrecent")
        for state in ("scheduled", "running", "dead"):
            if state in status:
                gauge(
                    "jobs.queue_jobs", int(status[state]), {"state": state}, mode="livemostrecent"
                )
        if "oldest_waiting_seconds" in status:
            gauge(
                "jobs.oldest_waiting_seconds",
                float(status["oldest_waiting_seconds"]),
                mode="livemostrecent",
            )


def _problem_body(status: int, detail: str) -> bytes:
    """The JSON of an RFC 9457 problem (``about:blank``, the status phrase as title)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    problem = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    return json.dumps(problem).encode("utf-8")


def _token_matches(header: str, expected: bytes | None) -> bool:
    """The bearer-token check of the API's ``metrics_guard``: SHA-256 digests, constant time."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if expected is None or scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(hashlib.sha256(token.encode("utf-8")).digest(), expected)


class WorkerMetricsServer:
    """``GET /metrics`` of a worker process, on a daemon thread (``http.server``).

    It runs apart from the worker's event loop, so a handler that blocks the
    loop does not stop scrapes. Protection follows ``features.protect_metrics``
    as far as a process without users can:

    ``admin``
        Only the metrics bearer token (``observability.metrics_token_hash``,
        compared as SHA-256 digests in constant time, as the API does). Admin
        users' credentials are not accepted: a worker has no auth layer. No or
        a wrong token answers 401; with no token configured nothing is served.
    ``internal``
        Only loopback and private-network peers (the API's
        :func:`~app_kernel.observability.metrics_routes.is_internal_address`),
        by the TCP peer address: there is no proxy in front of this port, so
        ``X-Forwarded-For`` is ignored. Others get 403.
    ``none``
        Public.

    Args:
        metrics: the kernel's metrics facade.
        mode: the protection mode.
        token_hash: SHA-256 hex of the metrics bearer token, if any.
        host: address to bind; ``127.0.0.1`` by default.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        path: the path served.
        request_timeout_seconds: how long a connection may stay silent before it
            is closed; each connection holds a thread, so a client that opens
            connections and sends nothing would otherwise keep them all.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        mode: str,
        token_hash: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/metrics",
        request_timeout_seconds: float = 10.0,
    ) -> None:
        if mode not in ("admin", "internal", "none"):
            msg = f"protect_metrics: expected admin, internal or none, got {mode!r}"
            raise ValueError(msg)
        expected = bytes.fromhex(token_hash) if token_hash else None
        if mode == "admin" and expected is None:
            _log.warning(
                "worker metrics need observability.metrics_token_hash when protect_metrics "
                "is admin; every scrape will get 401"
            )

        class Handler(BaseHTTPRequestHandler):
            server_version = "app_kernel-worker-metrics"
            timeout = request_timeout_seconds

            def log_message(self, format: str, *args: Any) -> None:
                del format, args  # no access log on stderr

            def _refuse(
                self, status: int, detail: str, headers: Mapping[str, str] | None = None
            ) -> None:
                """An RFC 9457 problem, as the API's refusals are."""
                body = _problem_body(status, detail)
                self.send_response(status)
                self.send_header("Content-Type", "application/problem+json")
                self.send_header("Content-Length", str(len(body)))
                for name, text in (headers or {}).items():
                    self.send_header(name, text)
                self.end_headers()
                if getattr(self, "command", None) != "HEAD":
                    self.wfile.write(body)

            def send_error(
                self, code: int, message: str | None = None, explain: str | None = None
            ) -> None:
                # http.server's own refusals (a malformed request line, an unknown
                # method): a problem too, rather than its HTML page.
                del explain
                self.close_connection = True
                self._refuse(
                    code, message or "The request could not be read.", {"Connection": "close"}
                )

            def _not_allowed(self) -> None:
                self._refuse(405, "Metrics are read with GET.", {"Allow": _ALLOWED})

            do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != path:
                    self._refuse(404, f"Nothing is served here; metrics are at {path}.")
                    return
                if mode == "internal" and not is_internal_address(self.client_address[0]):
                    self._refuse(403, "Metrics are served to internal networks only.")
                    return
                if mode == "admin" and not _token_matches(
                    self.headers.get("Authorization", ""), expected
                ):
                    self._refuse(
                        401, "Metrics need a bearer token.", {"WWW-Authenticate": "Bearer"}
                    )
                    return
                body, content_type = metrics.render(self.headers.get("Accept", ""))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="app_kernel-worker-metrics", daemon=True
        )

    def start(self) -> WorkerMetricsServer:
        self._thread.start()
        _log.info("worker metrics served", host=self.host, port=self.port)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
