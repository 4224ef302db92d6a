"""Helpers every Redis backend shares: packaged Lua, argument encoding, error wrapping.

Backends keep each atomic operation in a ``.lua`` file beside their module and
call it through ``redis.register_script`` (EVALSHA, reloading the script once
after ``NOSCRIPT``). The ``redis`` package is imported only when an error is
actually being translated, so the kernel imports cleanly without the extra.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from importlib import resources

from app_kernel.errors import BackendUnavailable

__all__ = ("backend_errors", "encode", "read_lua", "text", "to_ms")


def read_lua(package: str, filename: str) -> str:
    """The text of ``filename`` shipped in ``package`` (read once, at import)."""
    return resources.files(package).joinpath(filename).read_text("utf-8")


def encode(value: str) -> bytes:
    """``value`` as bytes; lone surrogates (undecodable input) survive the round trip."""
    return value.encode("utf-8", "surrogatepass")


def text(value: bytes | str) -> str:
    """A reply as text, whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def to_ms(seconds: float) -> int:
    """A positive duration in whole milliseconds, rounded up (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


@contextlib.contextmanager
def backend_errors(what: str, operation: str) -> Iterator[None]:
    """Turn a Redis failure inside the block into :class:`BackendUnavailable`.

    Args:
        what: the backend, for the message (``"Redis stream leases"``).
        operation: what was being done (``"acquire"``).
    """
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:
        msg = f"{what}: {operation} failed: {exc}"
        raise BackendUnavailable(msg) from exc
