"""Log lines rendered without structlog's renderer, when nothing in them needs redacting.

:func:`flat_json` writes the line ``redact_secrets`` and ``JSONRenderer`` would
write for an event of plain values; :class:`RequestLine` is the access line,
queued as its values and written from one template. Both give way (None) to
the full path whenever a value could hold a secret or has an unusual type.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import structlog
from structlog.contextvars import merge_contextvars
from structlog.typing import EventDict

from app_kernel.observability.redaction import may_hold_secret, secret_keys

__all__ = (
    "RequestLine",
    "flat_json",
    "static_suffix",
    "structlog_context_empty",
    "timestamp",
)

_encode_text = json.encoder.encode_basestring_ascii  # what json.dumps uses by default


@functools.lru_cache(maxsize=256)
def _line_template(keys: tuple[str, ...]) -> str:
    """A ``%``-template of the JSON object with ``keys``, in order, as ``json.dumps`` writes it."""
    fields = ", ".join(_encode_text(key).replace("%", "%%") + ": %s" for key in keys)
    return "{" + fields + "}"


def flat_json(event: EventDict) -> str | None:
    """The line ``redact_secrets`` and ``JSONRenderer`` would write for ``event``, or None.

    Only for the usual line: string keys, values that are str, int, float
    (finite), bool or None, no credential-like key and no text that could hold
    a secret, so there is nothing to redact. Anything else is None and takes
    the full path. Twice as fast, and most lines are such lines.
    """
    values: list[str] = []
    texts: list[str] = []
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            texts.append(value)
            values.append(_encode_text(value))
        elif kind is int:
            values.append(int.__repr__(value))
        elif kind is float and math.isfinite(value):
            values.append(float.__repr__(value))
        elif value is None:
            values.append("null")
        elif kind is bool:
            values.append("true" if value else "false")
        else:
            return None
        if type(key) is not str:
            return None
    keys = tuple(event)
    if secret_keys(keys) or (texts and may_hold_secret("\n".join(texts))):
        return None
    return _line_template(keys) % tuple(values)


class RequestLine(NamedTuple):
    """An access line, queued as its values; rendered at the end of the loop pass."""

    logger_name: str
    method: str
    route: str
    status: int
    duration_ms: float
    request_id: str | None
    trace_id: str | None
    timestamp: str

    def event(self, static_fields: Mapping[str, Any]) -> EventDict:
        """The event dict ``HotPathLogger.info`` would have queued for this line."""
        event: EventDict = {
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "event": "request",
        }
        if self.request_id is not None:
            event["request_id"] = self.request_id
        if self.trace_id is not None:
            event["trace_id"] = self.trace_id
        event["level"] = "info"
        event["logger"] = self.logger_name
        event["timestamp"] = self.timestamp
        for key, value in static_fields.items():  # as _add_static_fields: never over a field
            event.setdefault(key, value)
        return event

    def json(self, suffix: str | None) -> str | None:
        """The JSON line of :meth:`event`, ``suffix`` being :func:`static_suffix` of
        the static fields; None when the full path must write it (a value that
        could hold a secret, an odd type, static fields needing it)."""
        method, route, rid, tid = self.method, self.route, self.request_id, self.trace_id
        if (
            suffix is None
            or type(method) is not str
            or type(route) is not str
            or type(self.status) is not int
            or type(self.duration_ms) is not float
            or not math.isfinite(self.duration_ms)
            or may_hold_secret(f"{method}\n{route}\n{rid}\n{tid}\n{self.logger_name}")
        ):
            return None
        ids = "" if rid is None else f', "request_id": {_encode_text(rid)}'
        if tid is not None:
            ids += f', "trace_id": {_encode_text(tid)}'
        return (
            f'{{"method": {_encode_text(method)}, "route": {_encode_text(route)}, '
            f'"status": {int.__repr__(self.status)}, '
            f'"duration_ms": {float.__repr__(self.duration_ms)}, "event": "request"{ids}, '
            f'"level": "info", "logger": {_encode_text(self.logger_name)}, '
            f'"timestamp": "{self.timestamp}"{suffix}}}'
        )


def structlog_context_empty() -> bool:
    """True when no field is bound with structlog's contextvars in this context."""
    variables = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
    if not isinstance(variables, dict):  # structlog changed: ask it the slow way
        return not merge_contextvars(None, "", {})
    return all(var.get() is Ellipsis for var in variables.values())


def static_suffix(static_fields: Mapping[str, Any]) -> str | None:
    """The static fields as the tail of a JSON line (``, "service": "svc"``), "" for
    none, None when they need the full path (redaction, odd types)."""
    if not static_fields:
        return ""
    line = flat_json(dict(static_fields))
    return None if line is None else ", " + line[1:-1]


_second_stamp: tuple[int, str] = (-1, "")


def timestamp() -> str:
    """Now as ``2026-11-27T08:11:06.123456Z``, or without the fraction on a whole
    second, as ``datetime.isoformat`` does. The date and time up to the second
    are formatted once per second rather than on every line.
    """
    global _second_stamp
    second, nanos = divmod(time.time_ns(), 1_000_000_000)
    micro = nanos // 1000  # floored, as datetime.now() does
    cached_second, prefix = _second_stamp
    if cached_second != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_stamp = (second, prefix)
    return f"{prefix}.{micro:06d}Z" if micro else f"{prefix}Z"
