"""Structured logging: structlog over the standard library, context in contextvars.

Every line carries the fields bound with :func:`log_context`, and the request
id and trace id of the request (or job) being served. Production writes one
JSON object per line; debug mode writes readable console lines. Values of keys
that look like credentials are replaced before anything is rendered, so a
password, token or ``Authorization`` header never reaches a log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal

import structlog
from structlog.contextvars import bound_contextvars, merge_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

from app_kernel.observability.context import current_request_id
from app_kernel.observability.log_lines import (
    RequestLine,
    flat_json,
    static_suffix,
    structlog_context_empty,
    timestamp,
)
from app_kernel.observability.redaction import (
    REDACTED,
    is_secret_key,
    redact_secrets,
    scrub_text,
)
from app_kernel.observability.tracing import current_trace_id

__all__ = (
    "REDACTED",
    "HotPathLogger",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "log_context",
    "redact_secrets",
    "scrub_text",
)

# Read at every call rather than captured: structlog caches a logger's processors
# on first use, so a closure would keep the service name of the first configuration.
_static_fields: dict[str, Any] = {}
# The static fields as the tail of a JSON line (", \"service\": \"svc\""), "" without
# any, None when they need the full path (redaction, odd types).
_static_suffix: str | None = ""


def _add_static_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in _static_fields.items():
        event_dict.setdefault(key, value)
    return event_dict


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """``ProcessorFormatter`` without the record copy for plain structlog lines.

    A line from a structlog logger that carries no exception or stack is
    rendered straight from a copy of its event dict (the copy of the whole
    record, made so other handlers see it unchanged, costs as much as the
    rendering); stdlib records and exceptions take the full path.
    """

    def __init__(self, *, flat_json: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        meta = structlog.stdlib.ProcessorFormatter.remove_processors_meta
        self._direct = tuple(p for p in self.processors if p is not meta)
        self._flat_json = flat_json

    def format(self, record: logging.LogRecord) -> str:
        event = record.msg
        name = getattr(record, "_name", None)
        if (
            type(event) is not dict
            or not isinstance(name, str)
            or record.exc_info
            or record.stack_info
            or "exc_info" in event
            or "stack_info" in event
        ):
            return super().format(record)
        return self.render(getattr(record, "_logger", None), name, event.copy())

    def render(self, logger: Any, method_name: str, event: EventDict | RequestLine) -> str:
        """Run redaction and the renderer over ``event`` (which they may change)."""
        if isinstance(event, RequestLine):
            line = event.json(_static_suffix) if self._flat_json else None
            if line is not None:
                return line
            event = event.event(_static_fields)
        if self._flat_json and "exc_info" not in event:
            line = flat_json(event)
            if line is not None:
                return line
        rendered: Any = event
        for processor in self._direct:
            rendered = processor(logger, method_name, rendered)
        return str(rendered)


class _KernelHandler(logging.StreamHandler[Any]):
    """The kernel's stream handler; writes hot-path lines without a ``LogRecord``.

    Hot-path lines queued on a running event loop are rendered and written
    together at the end of that loop pass, in one write: rendered one after
    the other they cost a fraction of what each costs rendered deep inside its
    own request. Anything else written through the handler, a flush, and
    :meth:`drain` write the queued lines first, so lines keep their order;
    ``logging.shutdown()`` at exit flushes what is left.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[tuple[logging.Logger, EventDict | RequestLine]] = []
        self._drain_on: asyncio.AbstractEventLoop | None = None

    def _direct(self) -> _Formatter | None:
        """The formatter, when lines may bypass ``LogRecord`` s (no filter, INFO passes)."""
        formatter = self.formatter
        if self.filters or type(formatter) is not _Formatter or self.level > logging.INFO:
            return None
        return formatter

    def write_event(self, logger: logging.Logger, event: EventDict | RequestLine) -> bool:
        """Write ``event`` as an INFO line of ``logger``, as :meth:`emit` would.

        On a running event loop the line is queued and written at the end of
        the loop pass; otherwise now. Returns False (nothing written) when a
        filter or a foreign formatter is set on this handler, so the caller
        must take the ``LogRecord`` path.
        """
        if self._direct() is None:
            return False
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            self._pending.append((logger, event))
            if loop is None:
                self._write_pending()
            elif self._drain_on is not loop:
                self._drain_on = loop
                loop.call_soon(self.drain)
        return True

    def drain(self) -> None:
        """Write the queued hot-path lines now."""
        with self.lock:  # type: ignore[union-attr]
            self._drain_on = None
            self._write_pending()

    def _write_pending(self) -> None:
        # Called with the lock held.
        pending, self._pending = self._pending, []
        if not pending:
            return
        formatter = self._direct()
        lines: list[str] = []
        for logger, event in pending:
            try:
                if formatter is None:  # a filter or formatter was set meanwhile
                    if self.level <= logging.INFO:
                        self.handle(_record_for(logger, event))
                    continue
                lines.append(formatter.render(logger, "info", event) + self.terminator)
            except Exception:  # as emit(): report and go on
                self.handleError(_record_for(logger, event))
        if lines:
            try:
                self.stream.write("".join(lines))
                super().flush()
            except Exception:
                self.handleError(_record_for(pending[-1][0], pending[-1][1]))

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.drain()
        super().emit(record)

    def flush(self) -> None:
        if self._pending:
            self.drain()
        super().flush()


def _record_for(logger: logging.Logger, event: EventDict | RequestLine) -> logging.LogRecord:
    if isinstance(event, RequestLine):
        event = event.event(_static_fields)
    return logger.makeRecord(
        logger.name,
        logging.INFO,
        "(hot path)",
        0,
        event,
        (),
        None,
        extra={"_logger": logger, "_name": "info"},
    )


def _only_kernel_handler(logger: logging.Logger) -> _KernelHandler | None:
    """The kernel's handler when it is the one place a line of ``logger`` goes.

    That is: no logger from ``logger`` up to the root filters records or holds
    a handler of its own, and the root holds the kernel's handler alone.
    """
    current: logging.Logger | None = logger
    root = logging.root
    while current is not None and current is not root:
        if current.filters or current.handlers:
            return None
        if not current.propagate:
            return None
        current = current.parent
    if root.filters or len(root.handlers) != 1:
        return None
    handler = root.handlers[0]
    return handler if type(handler) is _KernelHandler else None


def _add_request_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Add the request id and trace id of the request or job being served.

    They live in the kernel's own contextvars (set once per request or job), so
    serving a request costs no structlog binding; a field bound explicitly wins.
    """
    rid = current_request_id()
    if rid is not None:
        event_dict.setdefault("request_id", rid)
    trace_id = current_trace_id()
    if trace_id is not None:
        event_dict.setdefault("trace_id", trace_id)
    return event_dict


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it."""
    event_dict["timestamp"] = timestamp()
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        merge_contextvars,
        _add_request_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_timestamp,
    ]


def configure_logging(
    *,
    level: str = "INFO",
    fmt: Literal["json", "console"] = "json",
    service_name: str | None = None,
    stream: Any = None,
) -> None:
    """Route structlog and standard-library logging through one handler.

    Called by the kernel when it starts; calling it again replaces the
    previous configuration (it is process-wide, like ``logging`` itself).
    """
    global _static_suffix
    _static_fields.clear()
    if service_name:
        _static_fields["service"] = service_name
    _static_suffix = static_suffix(_static_fields)

    renderer: Processor
    if fmt == "console":
        # Plain tracebacks, formatted before redaction: the default (rich, with every
        # frame's locals) takes seconds on the event loop and bypasses redact_secrets.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    exception_processors: list[Processor] = [structlog.processors.format_exc_info]

    pre_chain: list[Processor] = [*_shared_processors(), _add_static_fields]
    formatter = _Formatter(
        flat_json=fmt == "json",
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exception_processors,
            redact_secrets,
            renderer,
        ],
    )
    handler = _KernelHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("app_kernel")

    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "app_kernel":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn installs its own handlers; let its records flow through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # The kernel writes its own access line with the request id and route.
    logging.getLogger("uvicorn.access").disabled = True

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A logger taking keyword fields: ``get_logger().info("saved", user_id="1")``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name or "app")
    return logger.bind(**initial) if initial else logger


class HotPathLogger:
    """Info lines for code that runs on every request (the access log).

    Writes the same line as ``get_logger(name).info(event, **fields)``: the
    event dict goes through the same processors that add the bound context,
    level, logger name, timestamp and service (those the formatter runs on
    stdlib records), then to the same handler, formatter and redaction. What
    it skips is structlog's bound-logger machinery and, when the kernel's
    handler is the only place the line can go (no other handler or filter on
    the way), the ``LogRecord`` and stdlib's dispatch too: then the line is
    handed to the handler, which on a running event loop renders and writes
    it with the other lines of the same loop pass (:meth:`flush` writes them
    at once). The fields and timestamp are taken when :meth:`info` is called.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger = logging.getLogger(name)
        self._chain = (*_shared_processors(), _add_static_fields)

    def info(self, event: str, **fields: Any) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fields["event"] = event
        line: Any = fields
        for processor in self._chain:
            line = processor(logger, "info", line)
        handler = _only_kernel_handler(logger)
        if handler is None or not handler.write_event(logger, line):
            logger.handle(_record_for(logger, line))

    def request(self, method: str, route: str, status: int, duration_ms: float) -> None:
        """The access line: ``info("request", method=..., route=..., status=...,
        duration_ms=...)``, the same line at about half the cost.

        Queued as its values and written from a template, when the kernel's
        handler is the only place it goes and no structlog context is bound
        (anything else takes :meth:`info`).
        """
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = _only_kernel_handler(logger)
        if handler is not None and structlog_context_empty():
            line = RequestLine(
                self.name,
                method,
                route,
                status,
                duration_ms,
                current_request_id(),
                current_trace_id(),
                timestamp(),
            )
            if handler.write_event(logger, line):
                return
        self.info("request", method=method, route=route, status=status, duration_ms=duration_ms)

    def flush(self) -> None:
        """Write the lines still queued for the end of this loop pass now."""
        handler = _only_kernel_handler(self._logger)
        if handler is not None:
            handler.drain()


@contextmanager
def log_context(**fields: Any) -> Iterator[MutableMapping[str, Any]]:
    """Bind ``fields`` to every log line written inside the block.

    The binding lives in a contextvar, so concurrent tasks each see their own
    fields and the previous values come back when the block ends.
    """
    with bound_contextvars(**fields):
        yield fields
