"""Empty Redis's script cache again right after the kernel reloads a script.

What another client's ``SCRIPT FLUSH`` (or a failover) between a reload and
its retry looks like to the kernel: the retry meets ``NOSCRIPT`` once more.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest
import redis.asyncio

from app_kernel._redis.mux import RedisMultiplexer

_SCRIPT_LOAD = b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n"


def flush_after_reloads(
    monkeypatch: pytest.MonkeyPatch, admin: redis.asyncio.Redis, times: int
) -> list[int]:
    """Flush the cache after each of the next ``times`` script loads, by the kernel's
    pipelined connection or a ``redis.asyncio`` client.

    Answers ``[flushes still to do]``; set its item to flush again.
    """
    left = [times]
    pool_load = redis.asyncio.Redis.script_load
    mux_send = RedisMultiplexer._send

    async def flush_if_due() -> None:
        if left[0] > 0:
            left[0] -= 1
            await admin.script_flush()

    async def script_load(self: redis.asyncio.Redis, script: Any) -> Any:
        sha = await pool_load(self, script)
        await flush_if_due()
        return sha

    def send(self: RedisMultiplexer, command: bytes) -> Awaitable[Any]:
        reply = mux_send(self, command)
        if not command.startswith(_SCRIPT_LOAD):
            return reply

        async def then_flush() -> Any:
            loaded = await reply
            await flush_if_due()
            return loaded

        return then_flush()

    monkeypatch.setattr(redis.asyncio.Redis, "script_load", script_load)
    monkeypatch.setattr(RedisMultiplexer, "_send", send)
    return left
