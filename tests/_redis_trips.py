"""Count the commands a Redis backend sends: one per round trip.

Backends talk to Redis through the kernel's pipelined connection (one write per
command) and, for a few operations, through the ``redis.asyncio`` pool (one
write per command or pipeline). :func:`count_redis_writes` records both.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

from app_kernel._redis.mux import RespProtocol


def count_redis_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Start recording every command written to Redis; answers the live list."""
    sent: list[bytes] = []
    mux_send = RespProtocol.send
    pool_send = redis.asyncio.Connection.send_packed_command

    def send(self: RespProtocol, command: bytes) -> Any:
        sent.append(command)
        return mux_send(self, command)

    async def send_packed_command(
        self: redis.asyncio.Connection, command: Any, check_health: bool = True
    ) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        sent.append(packed if isinstance(packed, bytes) else packed.encode())
        await pool_send(self, command, check_health)

    monkeypatch.setattr(RespProtocol, "send", send)
    monkeypatch.setattr(redis.asyncio.Connection, "send_packed_command", send_packed_command)
    return sent
