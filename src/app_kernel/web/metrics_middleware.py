"""Built-in HTTP metrics, as pure ASGI middleware.

Every HTTP request, errors included, is counted in::

    http_requests_total{method, route, status_class}   counter
    http_request_duration_seconds{method, route}        histogram
    http_requests_in_flight                             gauge (livesum)

Labels stay bounded: ``route`` is the matched route's template, read after
the response (``/items/{item_id}``), and every unmatched path is the one
value ``__unmatched__``; ``method`` is one of the standard methods or
``OTHER``; ``status_class`` is ``2xx`` to ``5xx``. The metrics path itself
is counted but left out of the in-flight gauge, so a scrape does not see
itself.
"""

from __future__ import annotations

import time

from app_kernel._runtime import kernel_of_app
from app_kernel.observability.metrics import Metrics
from app_kernel.types import ASGIApp, Message, Receive, Scope, Send
from app_kernel.web.request_context import route_template

__all__ = ("HttpMetricsMiddleware",)

REQUESTS = "http.requests"
DURATION = "http.request_duration_seconds"
IN_FLIGHT = "http.requests_in_flight"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def describe_http_metrics(metrics: Metrics) -> None:
    metrics.describe(REQUESTS, "HTTP requests answered, by method, route and status class.")
    metrics.describe(DURATION, "Time to answer an HTTP request, by method and route.")
    metrics.describe(IN_FLIGHT, "HTTP requests being answered now.")


class HttpMetricsMiddleware:
    """Count and time every HTTP request into the app's kernel metrics."""

    def __init__(self, app: ASGIApp, *, metrics_path: str | None = None) -> None:
        self.app = app
        self.metrics_path = metrics_path
        self._metrics: Metrics | None = None

    def _metrics_of(self, scope: Scope) -> Metrics:
        if self._metrics is None:
            metrics = kernel_of_app(scope["app"]).metrics
            describe_http_metrics(metrics)
            self._metrics = metrics
        return self._metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self._metrics_of(scope)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        status = 500
        tracked = scope["path"] != self.metrics_path

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if tracked:
            metrics.adjust_gauge(IN_FLIGHT, 1)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed = time.perf_counter() - started
            if tracked:
                metrics.adjust_gauge(IN_FLIGHT, -1)
            route = route_template(scope)
            metrics.increment(
                REQUESTS,
                tags={"method": method, "route": route, "status_class": f"{status // 100}xx"},
            )
            metrics.histogram(DURATION, elapsed, tags={"method": method, "route": route})
