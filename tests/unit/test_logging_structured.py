"""Structured logging: JSON lines, bound context, task isolation and secret redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from _log_capture import configured_logging, kernel_handler_alone
from app_kernel import get_logger, log_context
from app_kernel.observability.logging import HotPathLogger, _add_timestamp


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logging configured as JSON lines into a StringIO, for service ``svc``."""
    with configured_logging(level="INFO", fmt="json", service_name="svc") as out:
        yield out


def test_fields_are_written_as_json(stream: io.StringIO) -> None:
    get_logger().info("order placed", user_id="1", items=3)
    [line] = _lines(stream)
    assert line["event"] == "order placed"
    assert line["user_id"] == "1"
    assert line["items"] == 3
    assert line["level"] == "info"
    assert line["service"] == "svc"
    assert line["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    "nanos",
    [
        1_795_766_400_000_000_000,
        1_795_766_400_000_123_999,
        1_795_766_459_999_999_500,
        1_795_766_460_500_000_000,
    ],
)
def test_timestamps_read_as_structlog_writes_them(
    nanos: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole seconds lose the fraction, as datetime.isoformat; the cached second turns over."""
    monkeypatch.setattr(time, "time_ns", lambda: nanos)
    ours = _add_timestamp(None, "info", {})["timestamp"]
    second, rest = divmod(nanos, 1_000_000_000)
    moment = datetime.fromtimestamp(second, UTC).replace(microsecond=rest // 1000)
    assert ours == moment.isoformat().replace("+00:00", "Z")


def test_standard_library_records_are_json_too(stream: io.StringIO) -> None:
    logging.getLogger("some.library").warning("disk %s%% full", 91)
    [line] = _lines(stream)
    assert line["event"] == "disk 91% full"
    assert line["logger"] == "some.library"
    assert line["level"] == "warning"
    assert line["service"] == "svc"


def test_level_filters_lower_records() -> None:
    with configured_logging(level="WARNING", fmt="json") as out:
        log = get_logger("levels")
        log.info("quiet")
        log.warning("loud")
    assert [line["event"] for line in _lines(out)] == ["loud"]


class TestLogContext:
    """log_context binds fields to every line inside its block, and only there."""

    def test_binds_and_unbinds(self, stream: io.StringIO) -> None:
        log = get_logger()
        with log_context(request_id="abc", user_id="123"):
            log.info("step 1")
            log.info("step 2", extra_field=True)
        log.info("after")
        step1, step2, after = _lines(stream)
        assert (step1["request_id"], step1["user_id"]) == ("abc", "123")
        assert (step2["request_id"], step2["user_id"], step2["extra_field"]) == ("abc", "123", True)
        assert "request_id" not in after
        assert "user_id" not in after

    def test_nested_blocks_restore_the_outer_value(self, stream: io.StringIO) -> None:
        log = get_logger()
        with log_context(user_id="outer"):
            with log_context(user_id="inner", step="x"):
                log.info("inside")
            log.info("back")
        inside, back = _lines(stream)
        assert (inside["user_id"], inside["step"]) == ("inner", "x")
        assert back["user_id"] == "outer"
        assert "step" not in back

    async def test_concurrent_tasks_see_only_their_own_fields(self, stream: io.StringIO) -> None:
        log = get_logger()
        both_bound = asyncio.Barrier(2)

        async def work(name: str) -> None:
            with log_context(**{f"{name}_id": name}, task=name):
                await both_bound.wait()  # the other task has bound its fields too
                log.info("working", who=name)
                await asyncio.sleep(0)
                log.info("done", who=name)

        await asyncio.gather(work("a"), work("b"))
        log.info("parent")
        lines = _lines(stream)
        for line in lines[:-1]:
            who = line["who"]
            other = "b" if who == "a" else "a"
            assert line["task"] == who
            assert line[f"{who}_id"] == who
            assert f"{other}_id" not in line
        assert sorted(line["who"] for line in lines[:-1]) == ["a", "a", "b", "b"]
        assert "task" not in lines[-1]


class TestRedaction:
    """Credentials never reach the output, whatever field or text they are in."""

    SECRETS = ("hunter2", "tok-123", "key-456", "abc.def.ghi", "pg-pass", "redis-pass", "dXNlcjpw")

    def _assert_clean(self, text: str) -> None:
        leaked = [secret for secret in self.SECRETS if secret in text]
        assert not leaked, f"leaked {leaked} in {text}"

    def test_credential_fields(self, stream: io.StringIO) -> None:
        get_logger().info(
            "login",
            username="ann",
            password="hunter2",
            token="tok-123",
            api_key="key-456",
            authorization="Bearer abc.def.ghi",
        )
        [line] = _lines(stream)
        self._assert_clean(stream.getvalue())
        assert line["username"] == "ann"
        for key in ("password", "token", "api_key", "authorization"):
            assert line[key] == "[redacted]"

    def test_nested_headers(self, stream: io.StringIO) -> None:
        headers = {"Authorization": "Basic dXNlcjpw", "Accept": "application/json"}
        get_logger().info("outgoing", headers=headers, attempts=[{"token": "tok-123"}])
        [line] = _lines(stream)
        self._assert_clean(stream.getvalue())
        assert line["headers"]["Accept"] == "application/json"
        assert line["headers"]["Authorization"] == "[redacted]"

    def test_secrets_inside_text(self, stream: io.StringIO) -> None:
        log = get_logger()
        log.info("calling upstream with Bearer abc.def.ghi")
        log.info("connect", dsn="postgresql://app:pg-pass@db.internal:5432/app")
        logging.getLogger("redis.lib").error("lost redis://:redis-pass@cache:6379/0")
        self._assert_clean(stream.getvalue())
        first, second, third = _lines(stream)
        assert first["event"] == "calling upstream with Bearer [redacted]"
        assert second["dsn"] == "postgresql://app:[redacted]@db.internal:5432/app"
        assert "cache:6379" in third["event"]

    def test_secrets_in_any_of_several_text_fields(self, stream: io.StringIO) -> None:
        get_logger().info(
            "proxied",
            route="/a",
            upstream="https://svc:pg-pass@up.internal/x",
            note="sent Basic dXNlcjpw",
            plain="bearer",  # a word at the end of one value, text at the start of the next
            after="ok",
        )
        [line] = _lines(stream)
        self._assert_clean(stream.getvalue())
        assert line["upstream"] == "https://svc:[redacted]@up.internal/x"
        assert line["note"] == "sent Basic [redacted]"
        assert (line["route"], line["plain"], line["after"]) == ("/a", "bearer", "ok")

    @pytest.mark.parametrize(
        ("text", "logged"),
        [
            ("login failed: password=hunter2 user=bob", "password=[redacted] user=bob"),
            ('body {"password": "hunter2", "name": "x"}', '{"password": [redacted], "name": "x"}'),
            ("{'api_key': 'k-123', 'max_tokens': 5}", "{'api_key': [redacted], 'max_tokens': 5}"),
            ("GET /cb?token=abc&page=2", "/cb?token=[redacted]&page=2"),
            ("note: client_secret=abc", "note: client_secret=[redacted]"),
            ("X-API-Key: k-123 sent", "X-API-Key: [redacted] sent"),
            ("max_tokens=5 passenger=1 monkey=2", "max_tokens=5 passenger=1 monkey=2"),
            ("headers:\nX-API-Key: k-123\nAccept: json", "X-API-Key: [redacted]\nAccept: json"),
            # A comparison in a traceback's source line assigns nothing either.
            ("    if token == expected_token:", "if token == expected_token:"),
            # Prose: a name and a colon in mid-sentence assign nothing.
            (
                "started without JWT_SECRET: tokens are signed with a random key",
                "started without JWT_SECRET: tokens are signed with a random key",
            ),
        ],
    )
    def test_credential_assignments_inside_text(
        self, stream: io.StringIO, text: str, logged: str
    ) -> None:
        get_logger().info(text)
        [line] = _lines(stream)
        assert logged in line["event"]
        for secret in ("hunter2", "k-123", "=abc"):
            assert secret not in line["event"]

    def test_exception_text(self, stream: io.StringIO) -> None:
        try:
            msg = "cannot reach postgresql://app:pg-pass@db.internal/app (password=pg-pass)"
            raise ConnectionError(msg)
        except ConnectionError:
            get_logger().exception("startup failed")
        [line] = _lines(stream)
        self._assert_clean(stream.getvalue())
        assert "ConnectionError" in line["exception"]

    def test_exception_text_in_console_format(self) -> None:
        with configured_logging(fmt="console") as out:
            try:
                msg = "cannot reach redis://:redis-pass@cache:6379"
                raise ConnectionError(msg)
            except ConnectionError:
                get_logger().exception("startup failed")
        text = out.getvalue()
        self._assert_clean(text)
        assert "ConnectionError" in text
        assert "Traceback" in text


def test_hot_path_lines_match_structlog_lines(stream: io.StringIO) -> None:
    """HotPathLogger skips structlog's chain but writes the same line, redaction included."""
    fields = {"method": "GET", "status": 200, "token": "tok-123", "note": "Bearer abc.def"}
    with log_context(request_id="r-1"), kernel_handler_alone():
        get_logger("app_kernel.access").info("request", **fields)
        HotPathLogger("app_kernel.access").info("request", **fields)
    slow, fast = _lines(stream)
    assert fast.pop("timestamp").endswith("Z")
    slow.pop("timestamp")
    assert fast == slow
    assert fast["request_id"] == "r-1"
    assert fast["token"] == "[redacted]"
    assert fast["note"] == "Bearer [redacted]"


def test_hot_path_lines_respect_the_level() -> None:
    with configured_logging(level="WARNING", fmt="json") as out:
        HotPathLogger("app_kernel.access").info("request", status=200)
    assert out.getvalue() == ""


class _Keep(logging.Handler):
    """A second handler on the root logger, keeping the records it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _records_seen() -> Iterator[list[logging.LogRecord]]:
    """The records another root handler gets while the block runs."""
    keep = _Keep()
    logging.getLogger().addHandler(keep)
    try:
        yield keep.records
    finally:
        logging.getLogger().removeHandler(keep)


def _drop_404(record: logging.LogRecord) -> bool:
    """A filter dropping access lines with status 404."""
    return not (isinstance(record.msg, dict) and record.msg.get("status") == 404)


def test_other_handlers_see_the_record_unchanged(stream: io.StringIO) -> None:
    """The kernel's handler renders without touching the record another handler gets."""
    with _records_seen() as seen:
        get_logger("shared").info("saved", password="hunter2", items=2)
    [line] = _lines(stream)
    assert line["password"] == "[redacted]"
    assert line["items"] == 2
    [record] = seen
    assert isinstance(record.msg, dict)
    assert record.msg["password"] == "hunter2"  # redacted in the kernel's copy only


def test_hot_path_lines_reach_other_handlers_and_filters(stream: io.StringIO) -> None:
    """With another handler, or a filter on the way, the line goes through a LogRecord."""
    hot = HotPathLogger("app_kernel.access")
    with _records_seen() as seen:
        hot.info("request", status=200)
    [record] = seen
    assert isinstance(record.msg, dict)
    assert record.msg["status"] == 200

    access = logging.getLogger("app_kernel.access")
    access.addFilter(_drop_404)
    try:
        with kernel_handler_alone():
            hot.info("request", status=404)
            hot.info("request", status=201)
    finally:
        access.removeFilter(_drop_404)
    assert [line["status"] for line in _lines(stream)] == [200, 201]


async def test_hot_path_lines_of_one_loop_pass_are_written_together(stream: io.StringIO) -> None:
    """On a running loop, lines wait for the end of the pass, in order, in one write."""
    writes: list[str] = []
    original_write = stream.write

    def counting_write(text: str) -> int:
        writes.append(text)
        return original_write(text)

    stream.write = counting_write  # type: ignore[method-assign]
    hot = HotPathLogger("app_kernel.access")
    with kernel_handler_alone():
        for status in (200, 201, 202):
            hot.info("request", status=status)
        assert stream.getvalue() == ""  # not yet: the loop pass is not over
        await asyncio.sleep(0)
    assert [line["status"] for line in _lines(stream)] == [200, 201, 202]
    assert len(writes) == 1


async def test_queued_lines_come_before_any_later_line(stream: io.StringIO) -> None:
    hot = HotPathLogger("app_kernel.access")
    with kernel_handler_alone():
        hot.info("request", status=200)
        assert stream.getvalue() == ""
        get_logger("other").warning("after the request")
        logging.getLogger("stdlib").error("and this")
    events = [line["event"] for line in _lines(stream)]
    assert events == ["request", "after the request", "and this"]


async def test_flush_writes_queued_lines_now(stream: io.StringIO) -> None:
    hot = HotPathLogger("app_kernel.access")
    with kernel_handler_alone():
        hot.info("request", status=200)
        hot.flush()
        assert [line["status"] for line in _lines(stream)] == [200]
        hot.info("request", status=204)
        assert len(_lines(stream)) == 1
        for handler in logging.getLogger().handlers:
            handler.flush()  # what logging.shutdown() does at exit
    assert [line["status"] for line in _lines(stream)] == [200, 204]


async def test_queued_lines_meet_a_filter_set_before_they_are_written(
    stream: io.StringIO,
) -> None:
    """A line queued before a filter was put on the handler still passes through it."""
    [handler] = [h for h in logging.getLogger().handlers if h.get_name() == "app_kernel"]
    hot = HotPathLogger("app_kernel.access")
    with kernel_handler_alone():
        hot.info("request", status=404)
        hot.info("request", status=200)
        handler.addFilter(_drop_404)
        try:
            await asyncio.sleep(0)
        finally:
            handler.removeFilter(_drop_404)
    assert [line["status"] for line in _lines(stream)] == [200]


def test_request_and_trace_ids_come_from_the_kernel_context(stream: io.StringIO) -> None:
    """Lines written while a request is served carry its ids; an explicit field wins."""
    from app_kernel.observability.context import request_id
    from app_kernel.observability.tracing import reset_trace_id, set_trace_id

    id_token = request_id.set("r-42")
    trace_token = set_trace_id("ab" * 16)
    try:
        get_logger().info("inside")
        HotPathLogger("app_kernel.access").info("request")
        get_logger().info("explicit", request_id="mine")
    finally:
        reset_trace_id(trace_token)
        request_id.reset(id_token)
    get_logger().info("outside")
    inside, hot, explicit, outside = _lines(stream)
    assert (inside["request_id"], inside["trace_id"]) == ("r-42", "ab" * 16)
    assert (hot["request_id"], hot["trace_id"]) == ("r-42", "ab" * 16)
    assert explicit["request_id"] == "mine"
    assert "request_id" not in outside
    assert "trace_id" not in outside


def test_reconfiguring_applies_to_loggers_already_used() -> None:
    """A logger used under one configuration follows the next one (its service name)."""
    log = get_logger("reconfigured")
    with configured_logging(fmt="json", service_name="first") as first:
        log.info("one")
        with configured_logging(fmt="json", service_name="second") as second:
            log.info("two")
    assert [(line["event"], line["service"]) for line in _lines(first)] == [("one", "first")]
    assert [(line["event"], line["service"]) for line in _lines(second)] == [("two", "second")]


_FLAT_CASES: list[dict[str, Any]] = [
    {"method": "GET", "route": "/api/v1/widgets/{id}", "status": 200, "duration_ms": 0.95},
    {"event": 'quote " backslash \\ tab \t newline \n', "n": -3, "ok": True, "no": False},
    {"event": "naïve café ✓ \u2028", "nothing": None, "big": 2**70, "tiny": 1e-300},
    {"event": "odd floats", "nan": float("nan"), "inf": float("inf"), "neg": -0.0},
    {"event": "percent %s %(x)s", "50%": "100%"},
    {"event": "login", "password": "hunter2"},  # a secret key
    {"event": "call", "note": "Authorization: Bearer abc.def"},  # a secret in text
    {"event": "dsn", "url": "postgresql://app:pw@db/app"},
    {"event": "key", "text": "ak_0123456789ab_" + "x" * 24},
    {"event": "nested", "headers": {"authorization": "Bearer x"}},  # not flat
    {"event": "list", "items": [1, 2]},
    {"event": "subclass", "kind": type("Text", (str,), {})("not a plain str")},
]


@pytest.mark.parametrize("event", _FLAT_CASES)
def test_flat_lines_are_the_lines_the_full_path_writes(event: dict[str, Any]) -> None:
    """The shortcut for flat lines writes exactly what redaction and JSONRenderer write."""
    import structlog

    from app_kernel.observability.log_lines import flat_json
    from app_kernel.observability.redaction import redact_secrets

    redacted = redact_secrets(None, "info", dict(event))
    full = structlog.processors.JSONRenderer()(None, "info", redacted)
    flat = flat_json(dict(event))
    assert flat is None or flat == full
    plain = all(
        type(value) in (str, int, bool, type(None))
        or (type(value) is float and math.isfinite(value))
        for value in event.values()
    )
    if plain and full == json.dumps(event):  # nothing to redact: the shortcut is taken
        assert flat == full
    else:
        assert flat is None


_ACCESS_CASES = [
    ("GET", "/api/v1/widgets/{id}", 200, 0.95),
    ("POST", '/odd/"quoted"/naïve/✓', 500, 1234.5),
    ("GET", "/pay/bearer abc.def", 401, 0.01),  # text a secret pattern matches
    ("GET", "/nan", 200, float("nan")),
]


@pytest.mark.parametrize(("method", "route", "status", "duration"), _ACCESS_CASES)
@pytest.mark.parametrize("ids", [True, False], ids=["in-request", "outside"])
@pytest.mark.parametrize("service", ["svc", "", "pass=Bearer xyz"])
def test_access_lines_are_the_lines_info_writes(
    method: str,
    route: str,
    status: int,
    duration: float,
    ids: bool,
    service: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HotPathLogger.request writes byte for byte what info("request", ...) writes."""
    from app_kernel.observability.context import request_id
    from app_kernel.observability.log_lines import RequestLine
    from app_kernel.observability.tracing import reset_trace_id, set_trace_id

    templated: list[str] = []
    to_json = RequestLine.json

    def spy(line: RequestLine, suffix: str | None) -> str | None:
        text = to_json(line, suffix)
        if text is not None:
            templated.append(text)
        return text

    monkeypatch.setattr(RequestLine, "json", spy)
    hot = HotPathLogger("app_kernel.access")
    with configured_logging(fmt="json", service_name=service) as out, kernel_handler_alone():
        id_token = request_id.set("r-1" if ids else None)
        trace_token = set_trace_id("ab" * 16 if ids else None)
        try:
            hot.request(method, route, status, duration)
            hot.info("request", method=method, route=route, status=status, duration_ms=duration)
        finally:
            reset_trace_id(trace_token)
            request_id.reset(id_token)
    fast, full = (_without_timestamp(line) for line in out.getvalue().splitlines())
    assert fast == full
    assert ('"request_id": "r-1"' in fast) is ids
    # The template wrote it unless something needed redaction or NaN needed json.dumps.
    plain = "bearer" not in route and duration == duration and "Bearer" not in service
    assert len(templated) == (1 if plain else 0)


def _without_timestamp(line: str) -> str:
    stamp = json.loads(line)["timestamp"]
    return line.replace(stamp, "<now>")


def test_access_lines_carry_bound_context_and_follow_the_format() -> None:
    """With structlog context bound, or console output, the line takes info()'s path."""
    hot = HotPathLogger("app_kernel.access")
    with configured_logging(fmt="json") as out, kernel_handler_alone():
        with log_context(tenant="t-9"):
            hot.request("GET", "/a", 200, 1.5)
        hot.request("GET", "/b", 200, 1.5)
    bound, plain = _lines(out)
    assert bound["tenant"] == "t-9"
    assert "tenant" not in plain
    with configured_logging(fmt="console") as out, kernel_handler_alone():
        hot.request("GET", "/c", 204, 0.5)
    assert "route=/c" in out.getvalue()
    assert "status=204" in out.getvalue()


async def test_queued_access_lines_meet_a_filter_as_records(stream: io.StringIO) -> None:
    """An access line queued before a filter was set reaches it as an event dict."""
    [handler] = [h for h in logging.getLogger().handlers if h.get_name() == "app_kernel"]
    hot = HotPathLogger("app_kernel.access")
    with kernel_handler_alone():
        hot.request("GET", "/missing", 404, 0.2)
        hot.request("GET", "/found", 200, 0.2)
        handler.addFilter(_drop_404)
        try:
            await asyncio.sleep(0)
        finally:
            handler.removeFilter(_drop_404)
    assert [(line["route"], line["status"]) for line in _lines(stream)] == [("/found", 200)]
