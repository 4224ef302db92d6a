"""Built-in HTTP metrics, observed by the request-context middleware.

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

from typing import TYPE_CHECKING

from app_kernel._runtime import kernel_of_scope
from app_kernel.web.request_context import route_template

if TYPE_CHECKING:
    from app_kernel.observability.metrics import (
        CounterSeries,
        GaugeSeries,
        HistogramSeries,
        Metrics,
    )
    from app_kernel.observability.request_outcome import RequestOutcome
    from app_kernel.types import Scope

__all__ = ("HttpMetricsObserver",)

REQUESTS = "http.requests"
DURATION = "http.request_duration_seconds"
IN_FLIGHT = "http.requests_in_flight"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
# Series kept per (method, route, status class); bounded by the routes, but
# started over if a router with unbounded templates ever fills it.
_MAX_KEPT_SERIES = 4096


def describe_http_metrics(metrics: Metrics) -> None:
    metrics.describe(REQUESTS, "HTTP requests answered, by method, route and status class.")
    metrics.describe(DURATION, "Time to answer an HTTP request, by method and route.")
    metrics.describe(IN_FLIGHT, "HTTP requests being answered now.")


class HttpMetricsObserver:
    """Count and time every HTTP request into the app's kernel metrics.

    A :class:`~app_kernel.observability.request_outcome.RequestObserver`.

    Args:
        metrics_path: the scrape path, left out of the in-flight gauge.
    """

    wants_error_body = False

    def __init__(self, *, metrics_path: str | None = None) -> None:
        self.metrics_path = metrics_path
        self._metrics: Metrics | None = None
        self._in_flight: GaugeSeries | None = None
        self._series: dict[tuple[str, str, int], tuple[CounterSeries, HistogramSeries]] = {}

    def _metrics_of(self, scope: Scope) -> Metrics:
        if self._metrics is None:
            metrics = kernel_of_scope(scope).metrics
            describe_http_metrics(metrics)
            self._in_flight = metrics.gauge_series(IN_FLIGHT)
            self._metrics = metrics
        return self._metrics

    def _adjust_in_flight(self, scope: Scope, delta: int) -> None:
        metrics = self._metrics_of(scope)
        if self._in_flight is not None:
            self._in_flight.inc(delta)
        else:
            metrics.adjust_gauge(IN_FLIGHT, delta)

    def started(self, scope: Scope) -> None:
        if scope["path"] != self.metrics_path:
            self._adjust_in_flight(scope, 1)

    def finished(self, scope: Scope, outcome: RequestOutcome) -> None:
        if scope["path"] != self.metrics_path:
            self._adjust_in_flight(scope, -1)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route = route_template(scope)
        key = (method, route, outcome.status // 100)
        kept = self._series.get(key)
        counter, histogram = kept if kept is not None else self._series_for(scope, key)
        # None: the metric is at its series limit, and the drop was counted.
        if counter is not None:
            counter.inc()
        if histogram is not None:
            histogram.observe(outcome.seconds)

    def _series_for(
        self, scope: Scope, key: tuple[str, str, int]
    ) -> tuple[CounterSeries | None, HistogramSeries | None]:
        metrics = self._metrics_of(scope)
        method, route, status = key
        counter = metrics.counter_series(
            REQUESTS, {"method": method, "route": route, "status_class": f"{status}xx"}
        )
        histogram = metrics.histogram_series(DURATION, {"method": method, "route": route})
        if counter is not None and histogram is not None:
            if len(self._series) >= _MAX_KEPT_SERIES:
                self._series.clear()
            self._series[key] = (counter, histogram)
        return counter, histogram
