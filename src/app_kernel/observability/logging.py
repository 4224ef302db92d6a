"""Structured logging: structlog over the standard library, context in contextvars.

Every line carries the fields bound with :func:`log_context` (the request id of
the request being served, for example). Production writes one JSON object per
line; debug mode writes readable console lines. Values of keys that look like
credentials are replaced before anything is rendered, so a password, token or
``Authorization`` header never reaches a log.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal

import structlog
from structlog.contextvars import bound_contextvars, merge_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

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

REDACTED = "[redacted]"
_TOO_DEEP = "[too deep]"
_MAX_DEPTH = 6

# Words that make a key's value a secret, matched against the key's parts
# ("refresh_token", "X-API-Key") so that "max_tokens" or "passenger" stay visible.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pass",
        "pwd",
        "secret",
        "token",
        "jwt",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "apikey",
        "privatekey",
        "signature",
    }
)
_KEY_PARTS = re.compile(r"[^a-z0-9]+")
# Bearer credentials and URL passwords inside free text.
_SECRET_TEXT = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
    (re.compile(r"\bak_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}"), REDACTED),
)


def _may_hold_secret(text: str) -> bool:
    """False when no pattern above can match ``text``: plain substring tests, which
    cost a fraction of one regular-expression search (most log text holds no secret)."""
    if "ak_" in text or ("@" in text and "://" in text):
        return True
    lowered = text.lower()
    return "bearer" in lowered or "basic" in lowered


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """True when a field named ``name`` holds a credential (``password``, ``api_key`` ...)."""
    lowered = name.lower()
    parts = [part for part in _KEY_PARTS.split(lowered) if part]
    if any(part in _SECRET_WORDS for part in parts):
        return True
    joined = "".join(parts)
    return "apikey" in joined or "privatekey" in joined or "password" in joined


def scrub_text(text: str) -> str:
    """``text`` with bearer tokens, API keys and URL passwords replaced."""
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if depth >= _MAX_DEPTH and isinstance(value, Mapping | list | tuple):
        # Deeper than anyone logs on purpose; hide it rather than risk a secret.
        return _TOO_DEEP
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide values of credential-like keys and in-text secrets."""
    del logger, method_name
    texts: list[str] = []
    for key, value in list(event_dict.items()):
        if is_secret_key(key):
            event_dict[key] = REDACTED
        elif type(value) is str:
            texts.append(value)
        elif key in ("event", "exception") or isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _scrub(value)
    # One search over every plain string (the separator is whitespace, so no
    # pattern can match across two values); most lines hold no secret at all.
    if texts and _may_hold_secret("\n".join(texts)):
        for key, value in event_dict.items():
            if type(value) is str:
                event_dict[key] = scrub_text(value)
    return event_dict


# Read at every call rather than captured: structlog caches a logger's processors
# on first use, so a closure would keep the service name of the first configuration.
_static_fields: dict[str, Any] = {}


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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        meta = structlog.stdlib.ProcessorFormatter.remove_processors_meta
        self._direct = tuple(p for p in self.processors if p is not meta)

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
        logger = getattr(record, "_logger", None)
        rendered: Any = event.copy()
        for processor in self._direct:
            rendered = processor(logger, name, rendered)
        return str(rendered)


def _shared_processors() -> list[Processor]:
    return [
        merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
    _static_fields.clear()
    if service_name:
        _static_fields["service"] = service_name

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
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exception_processors,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
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
    it skips is structlog's bound-logger machinery and stdlib's caller lookup
    (a third of the cost of a line).
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
        record = logger.makeRecord(
            self.name,
            logging.INFO,
            "(hot path)",
            0,
            line,
            (),
            None,
            extra={"_logger": logger, "_name": "info"},
        )
        logger.handle(record)


@contextmanager
def log_context(**fields: Any) -> Iterator[MutableMapping[str, Any]]:
    """Bind ``fields`` to every log line written inside the block.

    The binding lives in a contextvar, so concurrent tasks each see their own
    fields and the previous values come back when the block ends.
    """
    with bound_contextvars(**fields):
        yield fields
