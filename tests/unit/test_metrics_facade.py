"""The metrics facade: name mapping, misuse errors, series cap, exposition, compaction."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app_kernel.errors import KernelError, KernelNotInitialized
from app_kernel.observability import MetricMisuse, Metrics, get_metrics
from app_kernel.observability.metrics import prometheus_name
from app_kernel.observability.prometheus import compact_dead_files
from app_kernel.observability.tracing import parse_traceparent, trace_id_of

DEAD_PID = 2**22 + 1000
"""Above Linux's largest pid_max, so never a live process."""


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back: (name, sorted labels) -> value."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class TestNames:
    """Dotted names become Prometheus names; tags become labels."""

    @pytest.mark.parametrize(
        ("name", "kind", "timer", "expected"),
        [
            ("api.requests", "counter", False, "api_requests"),
            ("api.requests_total", "counter", False, "api_requests"),
            ("connections.active", "gauge", False, "connections_active"),
            ("api.response-time", "histogram", True, "api_response_time_seconds"),
            ("db.query_seconds", "histogram", True, "db_query_seconds"),
            ("9lives", "gauge", False, "_9lives"),
        ],
    )
    def test_mapping(self, name: str, kind: Any, timer: bool, expected: str) -> None:
        assert prometheus_name(name, kind, timer=timer) == expected

    def test_exposition_parses_back(self) -> None:
        metrics = Metrics()
        metrics.increment("api.requests", tags={"endpoint": "/users"})
        metrics.increment("api.requests", 2, tags={"endpoint": "/users"})
        metrics.gauge("connections.active", 42)
        metrics.histogram("payload.bytes", 512.0)
        got = samples(metrics)
        assert got[("api_requests_total", (("endpoint", "/users"),))] == 3
        assert got[("connections_active", ())] == 42
        assert got[("payload_bytes_count", ())] == 1
        assert got[("payload_bytes_sum", ())] == 512

    def test_prefix(self) -> None:
        metrics = Metrics(prefix="shop_")
        metrics.increment("orders")
        assert samples(metrics)[("shop_orders_total", ())] == 1

    def test_kernels_do_not_share_a_registry(self) -> None:
        first, second = Metrics(), Metrics()
        first.increment("only.here")
        second.gauge("only.here", 1)  # no clash: another registry
        assert ("only_here_total", ()) not in samples(second)


class TestTimer:
    """timer() is a context manager and a decorator for sync and async functions."""

    def test_context_manager_records_even_on_error(self) -> None:
        metrics = Metrics()
        with metrics.timer("step", tags={"kind": "a"}):
            pass
        with pytest.raises(RuntimeError), metrics.timer("step", tags={"kind": "a"}):
            raise RuntimeError
        assert samples(metrics)[("step_seconds_count", (("kind", "a"),))] == 2

    def test_sync_decorator(self) -> None:
        metrics = Metrics()

        @metrics.timer("work")
        def work(x: int) -> int:
            return x * 2

        assert work(2) == 4
        assert work.__name__ == "work"
        assert samples(metrics)[("work_seconds_count", ())] == 1

    async def test_async_decorator(self) -> None:
        metrics = Metrics()

        @metrics.timer("fetch")
        async def fetch() -> str:
            await asyncio.sleep(0.01)
            return "ok"

        assert await fetch() == "ok"
        got = samples(metrics)
        assert got[("fetch_seconds_count", ())] == 1
        assert got[("fetch_seconds_sum", ())] >= 0.01


class TestMisuse:
    """A name keeps its first kind and tag names; misuse raises at once."""

    def test_two_kinds(self) -> None:
        metrics = Metrics()
        metrics.increment("jobs.done")
        with pytest.raises(MetricMisuse, match=r"'jobs\.done'.*counter.*gauge") as info:
            metrics.gauge("jobs.done", 3)
        assert isinstance(info.value, KernelError)

    def test_changed_label_set(self) -> None:
        metrics = Metrics()
        metrics.increment("hits", tags={"route": "/a"})
        with pytest.raises(MetricMisuse, match=r"\(route\).*\(route, status\)"):
            metrics.increment("hits", tags={"route": "/a", "status": "200"})
        with pytest.raises(MetricMisuse, match=r"\(route\).*no labels"):
            metrics.increment("hits")

    def test_series_collision_is_misuse(self) -> None:
        metrics = Metrics()
        metrics.increment("x")
        with pytest.raises(MetricMisuse, match="x_total"):
            metrics.gauge("x_total", 1)

    @pytest.mark.parametrize(
        ("first", "second"), [("api.requests", "api_requests"), ("a-b", "a.b")]
    )
    def test_two_names_that_become_one_series_is_misuse(self, first: str, second: str) -> None:
        """Both would be counted in one Prometheus counter, each thinking it is alone."""
        metrics = Metrics()
        metrics.increment(first)
        with pytest.raises(MetricMisuse, match=rf"'{second}' and metric '{first}' both become"):
            metrics.increment(second)
        metrics.increment(first)
        assert samples(metrics)[(f"{first.replace('.', '_').replace('-', '_')}_total", ())] == 2

    @pytest.mark.parametrize("kind", ["increment", "gauge", "histogram"])
    def test_an_empty_tag_name_is_misuse(self, kind: str) -> None:
        """prometheus_client takes it and writes ``x_total{="v"}``, which no
        scraper parses: one bad tag would fail every scrape of the endpoint."""
        metrics = Metrics()
        with pytest.raises(MetricMisuse, match="tag name"):
            getattr(metrics, kind)("x", 1, tags={"": "v"})
        metrics.increment("y")
        assert samples(metrics)[("y_total", ())] == 1

    @pytest.mark.parametrize("value", [-1, float("nan"), float("inf")])
    def test_a_counter_takes_only_finite_amounts_of_at_least_zero(self, value: float) -> None:
        """A NaN or infinite amount would stay in the counter for good."""
        metrics = Metrics()
        metrics.increment("c")
        with pytest.raises(MetricMisuse, match="finite amount"):
            metrics.increment("c", value)
        assert samples(metrics)[("c_total", ())] == 1

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
    def test_a_histogram_takes_only_finite_values(self, value: float) -> None:
        metrics = Metrics()
        metrics.histogram("h", 0.5)
        with pytest.raises(MetricMisuse, match="finite value"):
            metrics.histogram("h", value)
        assert samples(metrics)[("h_sum", ())] == 0.5

    @pytest.mark.parametrize(
        ("kind", "tag"), [("histogram", "le"), ("increment", "__name"), ("gauge", "__x")]
    )
    def test_a_reserved_tag_name_is_misuse_naming_it(self, kind: str, tag: str) -> None:
        metrics = Metrics()
        with pytest.raises(MetricMisuse, match=f"tag '{tag}' is reserved by Prometheus") as info:
            getattr(metrics, kind)("x", 1, tags={tag: "v"})
        assert "methe fric" not in str(info.value)  # prometheus_client's own typo

    @pytest.mark.parametrize(
        ("tags", "problem"),
        [
            ([("route", "/a")], "a mapping of tag name to value, got list"),
            ({"route": ["/a", "/b"]}, "tag values are text or numbers, got list"),
        ],
    )
    def test_tags_of_the_wrong_shape_are_misuse(self, tags: Any, problem: str) -> None:
        metrics = Metrics()
        with pytest.raises(MetricMisuse, match=problem):
            metrics.increment("x", tags=tags)
        metrics.increment("x", tags={"route": "/a"})
        assert samples(metrics)[("x_total", (("route", "/a"),))] == 1

    def test_gauge_mode(self) -> None:
        metrics = Metrics()
        with pytest.raises(MetricMisuse, match="mode"):
            metrics.gauge("g", 1, mode="sum")  # type: ignore[arg-type]
        metrics.gauge("h", 1, mode="livemax")
        with pytest.raises(MetricMisuse, match="livemax"):
            metrics.gauge("h", 1)

    def test_output_stays_valid_after_misuse(self) -> None:
        metrics = Metrics()
        metrics.increment("a", tags={"k": "v"})
        with pytest.raises(MetricMisuse):
            metrics.increment("a", tags={"other": "v"})
        assert samples(metrics)[("a_total", (("k", "v"),))] == 1


class TestSeriesCap:
    """A metric holds at most max_series_per_metric label sets; the rest is counted."""

    @pytest.mark.parametrize("cap", [0, -1, 2.5, True, "10"])
    def test_cap_must_be_a_positive_whole_number(self, cap: Any) -> None:
        # A cap of 0 would silently drop every series of every metric.
        with pytest.raises(ValueError, match="max_series_per_metric"):
            Metrics(max_series_per_metric=cap)

    def test_drops_and_counts(self) -> None:
        metrics = Metrics(max_series_per_metric=3)
        for user in range(10):
            metrics.increment("per.user", tags={"user": str(user)})
        metrics.increment("per.user", tags={"user": "0"})  # an existing series still counts
        got = samples(metrics)
        kept = [key for key in got if key[0] == "per_user_total"]
        assert len(kept) == 3
        assert got[("per_user_total", (("user", "0"),))] == 2
        dropped = ("app_kernel_metrics_dropped_series_total", (("metric", "per_user"),))
        assert got[dropped] == 7

    def test_a_kept_series_is_the_one_the_facade_counts(self) -> None:
        metrics = Metrics(max_series_per_metric=2)
        counter = metrics.counter_series("hits", {"route": "/a"})
        gauge = metrics.gauge_series("busy")
        histogram = metrics.histogram_series("took", {"route": "/a"})
        assert counter is not None
        assert gauge is not None
        assert histogram is not None
        counter.inc()
        metrics.increment("hits", tags={"route": "/a"})
        gauge.inc(3)
        metrics.adjust_gauge("busy", -1)
        histogram.observe(0.2)
        metrics.histogram("took", 0.4, tags={"route": "/a"})
        got = samples(metrics)
        assert got[("hits_total", (("route", "/a"),))] == 2
        assert got[("busy", ())] == 2
        assert got[("took_count", (("route", "/a"),))] == 2
        assert got[("took_sum", (("route", "/a"),))] == pytest.approx(0.6)

    def test_no_series_past_the_limit_and_the_drop_is_counted(self) -> None:
        metrics = Metrics(max_series_per_metric=1)
        assert metrics.counter_series("hits", {"route": "/a"}) is not None
        assert metrics.counter_series("hits", {"route": "/b"}) is None
        assert metrics.histogram_series("took", {"route": "/a"}) is not None
        assert metrics.histogram_series("took", {"route": "/b"}) is None
        got = samples(metrics)
        assert got[("app_kernel_metrics_dropped_series_total", (("metric", "hits"),))] == 1
        assert got[("app_kernel_metrics_dropped_series_total", (("metric", "took"),))] == 1


class TestAccessor:
    def test_get_metrics_needs_a_kernel(self) -> None:
        with pytest.raises(KernelNotInitialized, match="get_metrics"):
            get_metrics()


class TestTraceparent:
    """The exact version-00 form, and later versions read as version 00."""

    GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @pytest.mark.parametrize(
        "value",
        [
            GOOD,
            # A later version: read its first four fields, as the W3C
            # recommendation asks ("SHOULD try to parse it").
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next",
        ],
    )
    def test_valid(self, value: str) -> None:
        assert parse_traceparent(value) == "4bf92f3577b34da6a3ce929d0e0e4736"

    @pytest.mark.parametrize(
        "value",
        [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ],
    )
    def test_invalid(self, value: str) -> None:
        assert parse_traceparent(value) is None

    FRESH = "0123456789abcdef0123456789abcdef"

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ([], FRESH),  # no header: the id the caller drew
            ([(b"traceparent", GOOD.encode())], "4bf92f3577b34da6a3ce929d0e0e4736"),
            ([(b"traceparent", b"garbage")], FRESH),
            ([(b"traceparent", GOOD.encode())] * 2, FRESH),  # given twice: ignored
        ],
    )
    def test_trace_id_of_a_request(self, headers: list[tuple[bytes, bytes]], expected: str) -> None:
        assert trace_id_of({"headers": headers}, self.FRESH) == expected

    @pytest.mark.parametrize("fresh", [None, "0" * 32, "abc"])
    def test_an_unusable_fresh_id_is_replaced_by_a_new_one(self, fresh: str | None) -> None:
        made = trace_id_of({"headers": []}, fresh)
        assert len(made) == 32
        assert made != "0" * 32
        assert parse_traceparent(f"00-{made}-00f067aa0ba902b7-01") == made


def _write(path: Path, entries: dict[tuple[str, str, tuple[tuple[str, str], ...]], float]) -> None:
    db = MmapedDict(str(path))
    for (metric, name, labels), value in entries.items():
        key = mmap_key(metric, name, [k for k, _ in labels], [v for _, v in labels], metric)
        db.write_value(key, value, 0.0)
    db.close()


def _collect(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


class TestCompaction:
    """Files of dead processes are merged into one aggregate without changing totals."""

    def test_merges_dead_files_keeping_totals(self, tmp_path: Path) -> None:
        route = (("route", "/a"),)
        for n in range(20):
            _write(tmp_path / f"counter_{DEAD_PID + n}.db", {("hits", "hits_total", route): 1.0})
            _write(
                tmp_path / f"histogram_{DEAD_PID + n}.db",
                {
                    ("lat", "lat_sum", ()): 0.5,
                    ("lat", "lat_bucket", (("le", "1.0"),)): 1.0,
                    ("lat", "lat_bucket", (("le", "+Inf"),)): 0.0,
                },
            )
        _write(tmp_path / f"gauge_livesum_{DEAD_PID}.db", {("busy", "busy", ()): 5.0})
        _write(tmp_path / f"counter_{os.getpid()}.db", {("hits", "hits_total", route): 2.0})
        before = _collect(tmp_path)
        assert before[("busy", ())] == 5

        removed = compact_dead_files(str(tmp_path), threshold=16)

        assert removed == 41
        after = _collect(tmp_path)
        del before[("busy", ())]  # a dead process's live gauge no longer counts
        assert after == before
        assert after[("hits_total", route)] == 22
        assert after[("lat_count", ())] == 20
        names = {p.name for p in tmp_path.glob("*.db")}
        assert names == {
            "counter_aggregate.db",
            f"counter_{os.getpid()}.db",
            "histogram_aggregate.db",
        }

        # A second round folds the old aggregate in too.
        for n in range(20):
            _write(tmp_path / f"counter_{DEAD_PID + n}.db", {("hits", "hits_total", route): 1.0})
        compact_dead_files(str(tmp_path), threshold=16)
        assert _collect(tmp_path)[("hits_total", route)] == 42

    def test_below_threshold_leaves_files(self, tmp_path: Path) -> None:
        for n in range(3):
            _write(tmp_path / f"counter_{DEAD_PID + n}.db", {("hits", "hits_total", ()): 1.0})
        assert compact_dead_files(str(tmp_path), threshold=16) == 0
        assert len(list(tmp_path.glob("*.db"))) == 3
