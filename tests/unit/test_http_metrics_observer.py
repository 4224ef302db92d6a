"""The HTTP metrics observer keeps its series, and still counts every value it drops."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from starlette.datastructures import State

from app_kernel.observability.metrics import Metrics
from app_kernel.observability.request_outcome import RequestOutcome
from app_kernel.web.http_metrics import HttpMetricsObserver


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _serve(observer: HttpMetricsObserver, app: object, method: str, status: int) -> None:
    scope = {"type": "http", "app": app, "method": method, "path": "/x", "state": {}}
    observer.started(scope)
    observer.finished(scope, RequestOutcome(status, 0.01, 0.0, None))


def test_requests_past_the_series_limit_are_dropped_and_counted_once_each() -> None:
    metrics = Metrics(max_series_per_metric=1)
    app = SimpleNamespace(state=State({"app_kernel": SimpleNamespace(metrics=metrics)}))
    observer = HttpMetricsObserver(metrics_path="/metrics")
    for _ in range(3):
        _serve(observer, app, "GET", 200)  # the one series each metric may hold
    for _ in range(2):
        _serve(observer, app, "POST", 201)  # a second series: dropped, every time
    got = _samples(metrics)
    get = (("method", "GET"), ("route", "__unmatched__"))
    assert got[("http_requests_total", (*get, ("status_class", "2xx")))] == 3
    assert got[("http_request_duration_seconds_count", get)] == 3
    assert not any(name == "http_requests_total" and ("method", "POST") in labels
                   for name, labels in got)  # fmt: skip
    dropped = "app_kernel_metrics_dropped_series_total"
    assert got[(dropped, (("metric", "http_requests"),))] == 2
    assert got[(dropped, (("metric", "http_request_duration_seconds"),))] == 2
    assert got[("http_requests_in_flight", ())] == 0
