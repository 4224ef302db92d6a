"""W3C trace context: the trace id of the current request, for logs and jobs.

An incoming ``traceparent`` header is accepted only in the exact form of
version ``00`` (https://www.w3.org/TR/trace-context/#traceparent-header)::

    00-<32 lowercase hex trace id, not all zeros>-<16 lowercase hex parent id,
    not all zeros>-<2 lowercase hex flags>

A later version (``01`` to ``fe``) is read the same way, and may carry more
fields after the flags, as the recommendation asks of a version-00 reader
("SHOULD try to parse it"). Anything else (version ``ff``, upper case, wrong
lengths, all-zero ids, version ``00`` with more fields, the header given twice)
is ignored. A request without a valid header starts a new
trace: it gets a fresh random trace id, so every log line of every request,
and every job it enqueues, carries one.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar, Token

from app_kernel.types import Scope

__all__ = (
    "current_trace_id",
    "new_trace_id",
    "parse_traceparent",
    "reset_trace_id",
    "set_trace_id",
    "trace_id_of",
)

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
_trace_id: ContextVar[str | None] = ContextVar("app_kernel_trace_id", default=None)


def parse_traceparent(value: str) -> str | None:
    """The trace id of a valid ``traceparent`` value (version 00, or a later one
    read as version 00 is), else None."""
    match = _TRACEPARENT.fullmatch(value)
    if (
        match is None
        or match[1] == "ff"  # forbidden by the recommendation
        or (match[1] == "00" and match[4] is not None)  # version 00 has exactly four fields
        or match[2] == _ZERO_TRACE
        or match[3] == _ZERO_PARENT
    ):
        return None
    return match[2]


def new_trace_id() -> str:
    """A random 32-hex trace id (never all zeros)."""
    while True:
        trace_id = os.urandom(16).hex()  # secrets.token_hex's source, without its 3 calls
        if trace_id != _ZERO_TRACE:
            return trace_id


def trace_id_of(scope: Scope, fresh: str | None = None) -> str:
    """The trace id of the request's valid ``traceparent``, or a new one.

    Args:
        scope: the request's ASGI scope.
        fresh: 32 random hex digits the caller already drew, used as the new
            id when the request brings none (a new one is drawn without it).
    """
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"traceparent":
            if found is not None:
                found = None  # given twice: ignored
                break
            found = value
    if found is not None:
        trace_id = parse_traceparent(found.decode("latin-1"))
        if trace_id is not None:
            return trace_id
    if fresh is not None and len(fresh) == 32 and fresh != _ZERO_TRACE:
        return fresh
    return new_trace_id()


def current_trace_id() -> str | None:
    """The trace id of the request being handled, or None outside a request."""
    return _trace_id.get()


def set_trace_id(trace_id: str | None) -> Token[str | None]:
    """Make ``trace_id`` current; give the token back to :func:`reset_trace_id`."""
    return _trace_id.set(trace_id)


def reset_trace_id(token: Token[str | None]) -> None:
    _trace_id.reset(token)
