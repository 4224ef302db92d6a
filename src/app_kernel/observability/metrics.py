"""The metrics facade of the spec: ``get_metrics().increment("api.requests")``.

Names are dotted and map to Prometheus names: invalid characters become
``_``, the configured prefix (none by default) goes in front, counters end in
``_total`` and timers in ``_seconds``::

    increment("api.requests")          api_requests_total        counter
    gauge("connections.active", 42)    connections_active        gauge
    histogram("payload.bytes", 512)    payload_bytes             histogram
    timer("api.response_time")         api_response_time_seconds histogram

Tags become labels. A metric keeps the kind and the label names of its first
use: using it as another kind, or with other tag names, raises
:class:`MetricMisuse` at once instead of corrupting the exposition. Each
metric holds at most ``observability.metrics_max_series_per_metric`` label
combinations; values for further ones are dropped and counted in
``app_kernel_metrics_dropped_series_total{metric=...}``.

Gauges take a multiprocess mode (one of :data:`LIVE_GAUGE_MODES`, default
``livesum``): how the values of several API processes combine. Only ``live``
modes are offered, so a dead process's gauge stops counting.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram

from app_kernel._runtime import current_kernel
from app_kernel.errors import KernelError
from app_kernel.observability.prometheus import LIVE_GAUGE_MODES, PrometheusBackend

__all__ = (
    "CounterSeries",
    "GaugeMode",
    "GaugeSeries",
    "HistogramSeries",
    "MetricMisuse",
    "Metrics",
    "Timer",
    "get_metrics",
    "prometheus_name",
)

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["counter", "gauge", "histogram"]
GaugeMode = Literal["livesum", "liveall", "livemax", "livemin", "livemostrecent"]
Tags = Mapping[str, object]

_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_]")
DROPPED_SERIES = "app_kernel.metrics_dropped_series"


class CounterSeries(Protocol):
    """One label combination of a counter (:meth:`Metrics.counter_series`)."""

    def inc(self, amount: float = 1) -> None: ...


class GaugeSeries(Protocol):
    """One label combination of a gauge (:meth:`Metrics.gauge_series`)."""

    def inc(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...


class HistogramSeries(Protocol):
    """One label combination of a histogram (:meth:`Metrics.histogram_series`)."""

    def observe(self, amount: float) -> None: ...


class MetricMisuse(KernelError, ValueError):
    """A metric was used in a way that contradicts its first use."""


def _sanitize(name: str) -> str:
    clean = _INVALID_CHARS.sub("_", name)
    return f"_{clean}" if clean[:1].isdigit() else clean


def prometheus_name(name: str, kind: Kind, *, prefix: str = "", timer: bool = False) -> str:
    """The Prometheus family name of a dotted metric name (counters without ``_total``)."""
    if not name:
        msg = "a metric name must not be empty"
        raise MetricMisuse(msg)
    base = _sanitize(f"{prefix}{name}")
    if kind == "counter":
        base = base.removesuffix("_total")
    if timer and not base.endswith("_seconds"):
        base = f"{base}_seconds"
    return base


class _Family:
    __slots__ = ("children", "dotted", "kind", "labelnames", "metric", "mode", "prom", "tagnames")

    def __init__(
        self,
        prom: str,
        dotted: str,
        kind: Kind,
        tagnames: tuple[str, ...],
        labelnames: tuple[str, ...],
        metric: Counter | Gauge | Histogram,
        mode: str,
    ) -> None:
        self.prom = prom
        self.dotted = dotted
        self.kind = kind
        self.tagnames = tagnames
        self.labelnames = labelnames
        self.metric = metric
        self.mode = mode
        self.children: dict[tuple[str, ...], Any] = {}


def _describe_labels(names: Sequence[str]) -> str:
    return "(" + ", ".join(names) + ")" if names else "no labels"


class Timer:
    """Times a block or every call of a function into a ``*_seconds`` histogram.

    ``with metrics.timer("x"):`` or ``@metrics.timer("x")`` on a sync or async
    function; the time is recorded whether the block raises or not.
    """

    def __init__(self, metrics: Metrics, name: str, tags: Tags | None) -> None:
        self._metrics = metrics
        self._name = name
        self._tags = tags
        self._starts: list[float] = []

    def __enter__(self) -> Timer:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._record(self._starts.pop())

    def _record(self, started: float) -> None:
        self._metrics._observe(self._name, time.perf_counter() - started, self._tags, timer=True)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):
            async_func = cast("Callable[..., Awaitable[Any]]", func)

            @functools.wraps(func)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await async_func(*args, **kwargs)
                finally:
                    self._record(started)

            return cast("F", timed_async)

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self._record(started)

        return cast("F", timed)


class Metrics:
    """Counters, gauges, histograms and timers of one kernel (see the module doc).

    Safe to use from any thread. Label children are cached, so a repeated
    ``increment`` with the same tags costs a dict lookup and the increment.
    """

    def __init__(
        self,
        backend: PrometheusBackend | None = None,
        *,
        prefix: str = "",
        max_series_per_metric: int = 2000,
    ) -> None:
        if type(max_series_per_metric) is not int or max_series_per_metric < 1:
            msg = (
                "max_series_per_metric must be a whole number of at least 1, "
                f"not {max_series_per_metric!r}"
            )
            raise ValueError(msg)
        self.backend = backend if backend is not None else PrometheusBackend()
        self.prefix = prefix
        self.max_series_per_metric = max_series_per_metric
        self._families: dict[str, _Family] = {}
        self._fast: dict[tuple[str, str, tuple[tuple[str, object], ...]], Any] = {}
        self._help: dict[str, str] = {}
        self._lock = threading.Lock()
        self.describe(
            DROPPED_SERIES,
            "Values dropped because their metric reached its series limit, by metric.",
        )

    # --- public API -------------------------------------------------------------------

    def describe(self, name: str, text: str) -> None:
        """Set the help text of ``name``; takes effect if called before its first use."""
        self._help[name] = text

    def increment(self, name: str, value: float = 1, tags: Tags | None = None) -> None:
        """Add ``value`` (finite, at least 0) to the counter ``name``.

        Raises:
            MetricMisuse: a negative, NaN or infinite ``value``. prometheus_client
                refuses only negatives, and a counter given NaN or infinity keeps
                it for good (so does every ``rate()`` over it).
        """
        if not (value >= 0 and math.isfinite(value)):
            msg = f"counter {name!r}: expected a finite amount of at least 0, got {value!r}"
            raise MetricMisuse(msg)
        child = self._child("counter", name, tags)
        if child is not None:
            child.inc(value)

    def gauge(
        self, name: str, value: float, tags: Tags | None = None, *, mode: GaugeMode = "livesum"
    ) -> None:
        """Set the gauge ``name`` to ``value`` (for this process; see ``mode``)."""
        child = self._child("gauge", name, tags, mode=mode)
        if child is not None:
            child.set(value)

    def adjust_gauge(
        self, name: str, delta: float, tags: Tags | None = None, *, mode: GaugeMode = "livesum"
    ) -> None:
        """Add ``delta`` (may be negative) to the gauge ``name``."""
        child = self._child("gauge", name, tags, mode=mode)
        if child is not None:
            child.inc(delta)

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Record ``value`` in the histogram ``name`` (Prometheus' default buckets).

        Raises:
            MetricMisuse: a NaN or infinite ``value``, which would leave the
                histogram's sum at NaN or infinity for good.
        """
        if not math.isfinite(value):
            msg = f"histogram {name!r}: expected a finite value, got {value!r}"
            raise MetricMisuse(msg)
        self._observe(name, value, tags, timer=False)

    def timer(self, name: str, tags: Tags | None = None) -> Timer:
        """A context manager and decorator recording seconds into ``<name>_seconds``."""
        return Timer(self, name, tags)

    # Series, for code that updates the same label combination on every request:
    # it keeps the series instead of naming it each time. Each is None when the
    # metric is at its series limit (the drop is counted); such a caller goes on
    # through increment/adjust_gauge/histogram, which count every later drop.

    def counter_series(self, name: str, tags: Tags | None = None) -> CounterSeries | None:
        """The series of counter ``name`` for ``tags`` (None past the series limit)."""
        series: CounterSeries | None = self._child("counter", name, tags)
        return series

    def gauge_series(
        self, name: str, tags: Tags | None = None, *, mode: GaugeMode = "livesum"
    ) -> GaugeSeries | None:
        """The series of gauge ``name`` for ``tags`` (None past the series limit)."""
        series: GaugeSeries | None = self._child("gauge", name, tags, mode=mode)
        return series

    def histogram_series(self, name: str, tags: Tags | None = None) -> HistogramSeries | None:
        """The series of histogram ``name`` for ``tags`` (None past the series limit)."""
        series: HistogramSeries | None = self._child(
            "histogram", name, tags, cache_kind="histogram"
        )
        return series

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The Prometheus exposition (body, content type); blocking, call it in a thread."""
        return self.backend.render(accept)

    def close(self) -> None:
        """The process is leaving: drop its live gauges (multiprocess mode)."""
        self.backend.close()

    # --- internals --------------------------------------------------------------------

    def _observe(self, name: str, value: float, tags: Tags | None, *, timer: bool) -> None:
        kind_key = "timer" if timer else "histogram"
        child = self._child("histogram", name, tags, cache_kind=kind_key, timer=timer)
        if child is not None:
            child.observe(value)

    def _child(
        self,
        kind: Kind,
        name: str,
        tags: Tags | None,
        *,
        mode: str = "",
        cache_kind: str | None = None,
        timer: bool = False,
    ) -> Any:
        try:
            key = (cache_kind or f"{kind}{mode}", name, tuple(tags.items()) if tags else ())
            child = self._fast.get(key)
        except (AttributeError, TypeError):  # not a mapping, or an unhashable value
            raise MetricMisuse(_bad_tags(name, tags)) from None
        if child is not None:
            return child
        dropped: str | None = None
        with self._lock:
            family = self._family(kind, name, tags, mode=mode, timer=timer)
            values = tuple(str(tags[tag]) for tag in family.tagnames) if tags else ()
            child = family.children.get(values)
            if child is None:
                # The drop counter is exempt: one series per metric name, which
                # code defines, and counting its own drops would never end.
                if len(family.children) >= self.max_series_per_metric and name != DROPPED_SERIES:
                    dropped = family.prom
                else:
                    child = family.metric.labels(*values) if values else family.metric
                    family.children[values] = child
            if child is not None:
                self._fast[key] = child
        if dropped is not None:
            self.increment(DROPPED_SERIES, tags={"metric": dropped})
        return child

    def _family(
        self, kind: Kind, name: str, tags: Tags | None, *, mode: str, timer: bool
    ) -> _Family:
        prom = prometheus_name(name, kind, prefix=self.prefix, timer=timer)
        tagnames = tuple(sorted(tags)) if tags else ()
        family = self._families.get(prom)
        if family is not None:
            if family.dotted != name:
                msg = (
                    f"metric {name!r} and metric {family.dotted!r} both become {prom!r} in "
                    "Prometheus and would be counted as one: rename one of them"
                )
                raise MetricMisuse(msg)
            if family.kind != kind:
                msg = (
                    f"metric {name!r} ({prom}) was first used as a {family.kind} "
                    f"(as {family.dotted!r}) and now as a {kind}: use another name"
                )
                raise MetricMisuse(msg)
            if family.tagnames != tagnames:
                msg = (
                    f"metric {name!r} ({prom}) was first used with tags "
                    f"{_describe_labels(family.tagnames)} and now with "
                    f"{_describe_labels(tagnames)}: a metric keeps one set of tag names"
                )
                raise MetricMisuse(msg)
            if kind == "gauge" and family.mode != mode:
                msg = (
                    f"gauge {name!r} ({prom}) was first used with mode {family.mode!r} "
                    f"and now with {mode!r}"
                )
                raise MetricMisuse(msg)
            return family
        if not all(tagnames):
            # prometheus_client would write ``{="v"}``, which fails every scrape.
            msg = f"metric {name!r}: a tag name must not be empty"
            raise MetricMisuse(msg)
        labelnames = tuple(_sanitize(tag) for tag in tagnames)
        reserved = [
            label
            for label in labelnames
            if label.startswith("__") or (kind == "histogram" and label == "le")
        ]
        if reserved:
            msg = (
                f"metric {name!r}: tag {reserved[0]!r} is reserved by Prometheus ('le' holds "
                "a histogram's buckets, names starting with '__' are internal): rename it"
            )
            raise MetricMisuse(msg)
        if len(set(labelnames)) != len(labelnames):
            msg = f"metric {name!r}: tags {tagnames} collide once sanitised to {labelnames}"
            raise MetricMisuse(msg)
        if kind == "gauge" and mode not in LIVE_GAUGE_MODES:
            msg = f"gauge {name!r}: mode must be one of {sorted(LIVE_GAUGE_MODES)}, got {mode!r}"
            raise MetricMisuse(msg)
        documentation = self._help.get(name, name)
        backend = self.backend
        try:
            metric: Counter | Gauge | Histogram
            if kind == "counter":
                metric = backend.counter(prom, documentation, labelnames)
            elif kind == "gauge":
                metric = backend.gauge(prom, documentation, labelnames, mode)
            else:
                metric = backend.histogram(prom, documentation, labelnames)
        except ValueError as exc:
            msg = f"metric {name!r} ({prom}) as a {kind} with {_describe_labels(labelnames)}: {exc}"
            raise MetricMisuse(msg) from None
        family = _Family(prom, name, kind, tagnames, labelnames, metric, mode)
        self._families[prom] = family
        return family


def _bad_tags(name: str, tags: object) -> str:
    if not isinstance(tags, Mapping):
        return (
            f"metric {name!r}: tags are a mapping of tag name to value, got {type(tags).__name__}"
        )
    kinds = sorted({type(value).__name__ for value in tags.values() if not _hashable(value)})
    return f"metric {name!r}: tag values are text or numbers, got {', '.join(kinds)}"


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def get_metrics() -> Metrics:
    """The metrics facade of the process's kernel."""
    metrics: Metrics = current_kernel("get_metrics()").metrics
    return metrics
