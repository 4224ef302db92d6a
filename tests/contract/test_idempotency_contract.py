"""The IdempotencyBackend contract, run on the embedded SQLite file and on Redis.

Expiry tests sleep for real (Redis counts TTLs on its own clock) with TTLs of a
fraction of a second.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from _redis_trips import count_redis_writes
from app_kernel._redis.client import close_redis
from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.errors import BackendUnavailable
from app_kernel.reliability.backends.idempotency_base import ClaimState, IdempotencyBackend
from app_kernel.reliability.backends.redis_idempotency import RedisIdempotency
from app_kernel.reliability.backends.sqlite_idempotency import SqliteIdempotency
from app_kernel.reliability.idempotency import (
    Idempotency,
    IdempotencyInProgress,
    storage_key,
)
from app_kernel.reliability.idempotency_http import parse_idempotency_key
from app_kernel.settings import ReliabilitySettings

WEIRD_KEYS = ["", "x" * 10_000, "ünïcödé 🔑", "{braces}", "a:b c", "\x00nul\r\n", "\udcff"]


def _key() -> str:
    return storage_key("test", uuid.uuid4().hex)


@pytest.fixture
async def backend(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[IdempotencyBackend]:
    """Each backend in turn: SQLite in ``tmp_path``, or Redis under a unique prefix."""
    if coordination_url is None:
        store = SqliteStore(tmp_path / "kernel.db")
        sqlite_backend = SqliteIdempotency(store)  # before open(): it registers its schema
        await store.open()
        try:
            yield sqlite_backend
        finally:
            await store.close()
    else:
        prefix: str = request.getfixturevalue("redis_key_prefix")
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            yield RedisIdempotency(client, RedisKeys(prefix))
        finally:
            await client.aclose()


def _service(backend: IdempotencyBackend, **overrides: Any) -> Idempotency:
    return Idempotency(backend, ReliabilitySettings(**overrides))


async def test_claim_complete_replay(backend: IdempotencyBackend) -> None:
    key = _key()
    assert (await backend.claim(key, "fp", "t1", 5)).state is ClaimState.ACQUIRED
    assert await backend.complete(key, "t1", b"\x00record\xff", 60) is True

    claim = await backend.claim(key, "fp", "t2", 5)

    assert claim.state is ClaimState.COMPLETED
    assert claim.record == b"\x00record\xff"


async def test_in_progress_then_mismatch(backend: IdempotencyBackend) -> None:
    key = _key()
    await backend.claim(key, "fp", "t1", 5)

    busy = await backend.claim(key, "fp", "t2", 5)
    assert busy.state is ClaimState.IN_PROGRESS
    assert 0 < busy.retry_after_seconds <= 5
    assert (await backend.claim(key, "other", "t3", 5)).state is ClaimState.MISMATCH

    await backend.complete(key, "t1", b"r", 60)
    assert (await backend.claim(key, "other", "t3", 5)).state is ClaimState.MISMATCH


async def test_release_lets_the_next_claim_win(backend: IdempotencyBackend) -> None:
    key = _key()
    await backend.claim(key, "fp", "t1", 5)

    assert await backend.release(key, "wrong") is False
    assert await backend.release(key, "t1") is True
    assert await backend.release(key, "t1") is False

    assert (await backend.claim(key, "fp2", "t2", 5)).state is ClaimState.ACQUIRED


async def test_release_never_deletes_a_stored_response(backend: IdempotencyBackend) -> None:
    key = _key()
    await backend.claim(key, "fp", "t1", 5)
    await backend.complete(key, "t1", b"r", 60)

    assert await backend.release(key, "t1") is False
    assert (await backend.claim(key, "fp", "t2", 5)).state is ClaimState.COMPLETED


async def test_fencing_token_mismatch_changes_nothing(backend: IdempotencyBackend) -> None:
    key = _key()
    await backend.claim(key, "fp", "t1", 5)

    assert await backend.complete(key, "t2", b"r", 60) is False
    assert await backend.heartbeat(key, "t2", 60) is False
    assert (await backend.claim(key, "fp", "t3", 5)).state is ClaimState.IN_PROGRESS
    assert await backend.complete(key, "t1", b"r", 60) is True
    assert await backend.complete(key, "t1", b"again", 60) is False


async def test_lock_expires(backend: IdempotencyBackend) -> None:
    """A claim whose holder died is free after the lock TTL, and the late holder is fenced."""
    key = _key()
    await backend.claim(key, "fp", "dead", 0.3)

    await asyncio.sleep(0.45)

    assert (await backend.claim(key, "fp", "t2", 5)).state is ClaimState.ACQUIRED
    assert await backend.complete(key, "dead", b"late", 60) is False
    assert await backend.complete(key, "t2", b"r", 60) is True


async def test_heartbeat_extends_the_claim(backend: IdempotencyBackend) -> None:
    key = _key()
    await backend.claim(key, "fp", "t1", 0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await backend.heartbeat(key, "t1", 0.4) is True

    assert (await backend.claim(key, "fp", "t2", 5)).state is ClaimState.IN_PROGRESS
    assert await backend.complete(key, "t1", b"r", 60) is True
    assert await backend.heartbeat(key, "t1", 5) is False  # done records are not pending


async def test_record_ttl_expires(backend: IdempotencyBackend) -> None:
    key = _key()
    await backend.claim(key, "fp", "t1", 5)
    await backend.complete(key, "t1", b"r", 0.3)

    await asyncio.sleep(0.45)

    assert (await backend.claim(key, "other", "t2", 5)).state is ClaimState.ACQUIRED


async def test_concurrent_claims_admit_one(backend: IdempotencyBackend) -> None:
    key = _key()
    claims = await asyncio.gather(*(backend.claim(key, "fp", f"t{i}", 5) for i in range(30)))
    states = [claim.state for claim in claims]
    assert states.count(ClaimState.ACQUIRED) == 1
    assert states.count(ClaimState.IN_PROGRESS) == 29


async def test_weird_keys_are_hashed(backend: IdempotencyBackend) -> None:
    for weird in WEIRD_KEYS:
        key = storage_key(weird, weird)
        assert len(key) == 64
        assert (await backend.claim(key, "fp", "t", 5)).state is ClaimState.ACQUIRED
        assert await backend.complete(key, "t", weird.encode("utf-8", "surrogatepass"), 60)


# --- the service --------------------------------------------------------------------------


async def test_run_executes_once_and_replays(backend: IdempotencyBackend) -> None:
    service = _service(backend)
    calls: list[int] = []

    async def work() -> dict[str, Any]:
        calls.append(1)
        return {"n": len(calls), "items": (1, 2)}

    first = await service.run("job-1", work, scope="jobs")
    again = await service.run("job-1", work, scope="jobs")
    other_scope = await service.run("job-1", work, scope="other")

    assert first == {"n": 1, "items": (1, 2)}
    assert again == {"n": 1, "items": [1, 2]}
    assert other_scope == {"n": 2, "items": (1, 2)}
    assert len(calls) == 2


async def test_run_releases_on_exception_and_refuses_while_running(
    backend: IdempotencyBackend,
) -> None:
    service = _service(backend)
    gate = asyncio.Event()

    async def boom() -> None:
        raise RuntimeError

    async def slow() -> str:
        await gate.wait()
        return "done"

    with pytest.raises(RuntimeError):
        await service.run("k", boom)
    running = asyncio.create_task(service.run("k", slow))
    await asyncio.sleep(0.05)
    with pytest.raises(IdempotencyInProgress, match="being processed"):
        await service.run("k", slow)
    gate.set()
    assert await running == "done"
    assert await service.run("k", boom) == "done"


async def test_service_heartbeats_a_long_run(backend: IdempotencyBackend) -> None:
    """The work outlives the lock TTL; the heartbeat keeps the claim."""
    service = _service(backend, idempotency_lock_ttl_seconds=0.3)

    async def slow() -> int:
        await asyncio.sleep(0.8)
        return 7

    running = asyncio.create_task(service.run("k", slow))
    await asyncio.sleep(0.6)
    with pytest.raises(IdempotencyInProgress):
        await service.run("k", slow)
    assert await running == 7
    assert await service.run("k", slow) == 7


def test_key_parsing() -> None:
    assert parse_idempotency_key(b'"8e03978e-40d5"', 255) == "8e03978e-40d5"
    assert parse_idempotency_key(b"bare-token_1", 255) == "bare-token_1"
    assert parse_idempotency_key(b'"a \\"q\\" \\\\"', 255) == 'a "q" \\'
    assert parse_idempotency_key(b"x" * 16, 16) == "x" * 16
    for bad in (
        b"",
        b'""',
        b'"open',
        b'"a"b"',
        b"a b",
        b"\xff\xfe",
        b"nul\x00",
        b"x" * 17,
        b'"\\n"',
    ):
        with pytest.raises(ValueError, match="Idempotency-Key"):
            parse_idempotency_key(bad, 16)


# --- Redis only ---------------------------------------------------------------------------


async def test_redis_recovers_from_a_flushed_script_cache(
    redis_url: str, redis_key_prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    backend = RedisIdempotency(client, RedisKeys(redis_key_prefix))
    key = _key()
    try:
        await client.script_flush()
        assert (await backend.claim(key, "fp", "t", 5)).state is ClaimState.ACQUIRED
        await client.script_flush()
        assert await backend.heartbeat(key, "t", 5) is True
        await client.script_flush()
        assert await backend.complete(key, "t", b"r", 60) is True
        await client.script_flush()
        assert await backend.release(key, "t") is False
    finally:
        await client.aclose()


async def test_redis_keys_are_bounded_and_prefixed(redis_url: str, redis_key_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    backend = RedisIdempotency(client, RedisKeys(redis_key_prefix))
    try:
        for weird in WEIRD_KEYS:
            await backend.claim(storage_key("scope", weird), "fp", "t", 5)
        keys = [key.decode() async for key in client.scan_iter(match=f"{redis_key_prefix}*")]
    finally:
        await client.aclose()
    assert len(keys) == len(WEIRD_KEYS)
    assert all(key.startswith(f"{redis_key_prefix}idem:{{") for key in keys)
    assert max(len(key) for key in keys) < 100


async def test_redis_does_one_round_trip_per_operation(
    redis_url: str, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = count_redis_writes(monkeypatch)
    client = redis.asyncio.Redis.from_url(redis_url)
    backend = RedisIdempotency(client, RedisKeys(redis_key_prefix))
    key = _key()
    operations = {
        "claim": lambda: backend.claim(key, "fp", "t", 5),
        "heartbeat": lambda: backend.heartbeat(key, "t", 5),
        "release": lambda: backend.release(key, "t"),
        "complete": lambda: backend.complete(key, "t", b"r", 60),
    }
    try:
        for operation in operations.values():  # connect and load every script
            await operation()
        trips: dict[str, int] = {}
        for name, operation in operations.items():
            await backend.release(key, "t")
            await backend.claim(key, "fp", "t", 5) if name != "claim" else None
            for _ in range(3):
                sent.clear()
                await operation()
                # Another test run may flush the shared server's scripts meanwhile.
                if not any(b"SCRIPT" in sent for sent in sent):
                    break
            trips[name] = len(sent)
    finally:
        await close_redis(client)

    assert trips == dict.fromkeys(operations, 1)


async def test_redis_errors_become_backend_unavailable(redis_key_prefix: str) -> None:
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    backend = RedisIdempotency(client, RedisKeys(redis_key_prefix))
    service = _service(backend)
    try:
        with pytest.raises(BackendUnavailable, match="claim"):
            await backend.claim(_key(), "fp", "t", 5)
        with pytest.raises(BackendUnavailable):
            await service.run("k", asyncio.sleep, scope="s")  # type: ignore[arg-type]
    finally:
        await client.aclose()


async def test_slow_backend_times_out(backend: IdempotencyBackend) -> None:
    """A call slower than ``idempotency_backend_timeout_seconds`` fails closed."""
    service = _service(backend, idempotency_backend_timeout_seconds=0.05)

    async def never() -> None:
        await asyncio.Event().wait()

    with pytest.raises(BackendUnavailable, match="longer than"):
        await service.call("claim", never())
