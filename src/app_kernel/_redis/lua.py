"""Helpers every Redis backend shares: packaged Lua, argument encoding, error wrapping.

Backends keep each atomic operation in a ``.lua`` file beside their module,
register it with ``redis.register_script`` and call it through
:func:`run_script` (EVALSHA, reloading the script after ``NOSCRIPT``). The
``redis`` package is imported only when a call is made or an error is being
translated, so the kernel imports cleanly without the extra.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from app_kernel.errors import BackendUnavailable

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = (
    "NOSCRIPT_ATTEMPTS",
    "backend_errors",
    "encode",
    "read_lua",
    "run_script",
    "text",
    "to_ms",
)

NOSCRIPT_ATTEMPTS = 3
"""EVALSHA attempts for one script call. ``NOSCRIPT`` means the script did not
run, so a retry is safe; the script cache can be emptied again between the
reload and the retry (another client's ``SCRIPT FLUSH``, a failover), which is
why one retry is not always enough."""


def read_lua(package: str, filename: str) -> str:
    """The text of ``filename`` shipped in ``package`` (read once, at import)."""
    return resources.files(package).joinpath(filename).read_text("utf-8")


async def run_script(
    script: AsyncScript, keys: Sequence[str], args: Sequence[bytes | int | str]
) -> Any:
    """``EVALSHA`` of a registered script; after ``NOSCRIPT``, load it and try again.

    Up to :data:`NOSCRIPT_ATTEMPTS` tries (redis-py's ``AsyncScript`` retries once).

    Raises:
        redis.exceptions.RedisError: the call failed (``NoScriptError`` when the
            cache was emptied before every try).
    """
    from redis.exceptions import NoScriptError

    client = script.registered_client
    for attempt in range(1, NOSCRIPT_ATTEMPTS + 1):
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            if attempt == NOSCRIPT_ATTEMPTS:
                raise
            script.sha = await client.script_load(script.script)
    raise AssertionError  # unreachable: the loop returns or raises


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
