"""backend_deadline: a time limit that a saturated event loop does not trip."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from app_kernel._deadline import backend_deadline


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    try:
        yield reader, writer
    finally:
        reader.close()
        writer.close()


async def test_a_slow_backend_times_out_after_the_limit() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with backend_deadline(0.05) as deadline:
            await asyncio.sleep(10)
    assert deadline.expired()
    assert time.monotonic() - started < 1.0


async def test_an_answer_in_time_passes_through() -> None:
    async with backend_deadline(0.5) as deadline:
        await asyncio.sleep(0)
    assert not deadline.expired()


def _answer_then_keep_the_loop_busy(writer: socket.socket) -> None:
    """The reply arrives at once, but the loop is busy for 4x the limit before it reads it."""

    def busy() -> None:
        writer.send(b"+OK\r\n")
        time.sleep(0.2)

    asyncio.get_running_loop().call_soon(busy)


@pytest.mark.allow_slow_callbacks
async def test_a_reply_waiting_unread_behind_a_busy_loop_is_not_a_timeout(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    reader, writer = sockets
    _answer_then_keep_the_loop_busy(writer)
    async with backend_deadline(0.05):
        reply = await asyncio.get_running_loop().sock_recv(reader, 16)
    assert reply == b"+OK\r\n"


@pytest.mark.allow_slow_callbacks
async def test_plain_asyncio_timeout_would_have_failed_that_call(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    """The same scenario under asyncio.timeout: the reason backend_deadline exists."""
    reader, writer = sockets
    _answer_then_keep_the_loop_busy(writer)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await asyncio.get_running_loop().sock_recv(reader, 16)


async def test_a_silent_backend_times_out_soon_after_the_limit_on_a_busy_loop() -> None:
    loop = asyncio.get_running_loop()
    running = True

    def lag() -> None:  # 40 ms of work per loop pass, close to the 50 ms limit
        time.sleep(0.04)
        if running:
            loop.call_soon(lag)

    loop.call_soon(lag)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            async with backend_deadline(0.05):
                await loop.create_future()
    finally:
        running = False
    assert 0.05 <= time.monotonic() - started < 0.5


def test_on_uvloop_too(sockets: tuple[socket.socket, socket.socket]) -> None:
    """uvloop runs timers before polling, asyncio after: the grace covers both orders."""
    uvloop = pytest.importorskip("uvloop")
    reader, writer = sockets

    async def scenario() -> tuple[bytes, bool]:
        _answer_then_keep_the_loop_busy(writer)
        async with backend_deadline(0.05):
            reply = await asyncio.get_running_loop().sock_recv(reader, 16)
        silent = False
        try:
            async with backend_deadline(0.05):
                await asyncio.get_running_loop().create_future()
        except TimeoutError:
            silent = True
        return reply, silent

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == (b"+OK\r\n", True)


async def test_blocks_sharing_the_timer_each_expire_at_their_own_limit() -> None:
    loop = asyncio.get_running_loop()
    expired: list[float] = []

    async def wait_forever(seconds: float) -> None:
        with pytest.raises(TimeoutError):
            async with backend_deadline(seconds):
                await loop.create_future()
        expired.append(seconds)

    started = time.monotonic()
    # Entered out of order: the later limits must not hold back the earlier ones.
    await asyncio.gather(wait_forever(0.3), wait_forever(0.05), wait_forever(0.15))
    assert expired == [0.05, 0.15, 0.3]
    assert time.monotonic() - started < 1.0


async def test_a_block_that_ended_is_not_cancelled_when_its_limit_passes() -> None:
    async with backend_deadline(0.02) as deadline:
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # the shared timer passes the old limit meanwhile
    assert not deadline.expired()
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_late_block_still_expires_behind_many_ended_ones() -> None:
    for _ in range(1000):
        async with backend_deadline(0.01):
            await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with backend_deadline(0.05):
            await asyncio.sleep(10)
    assert time.monotonic() - started < 1.0
