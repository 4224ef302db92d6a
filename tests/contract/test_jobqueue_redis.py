"""RedisJobQueue only: key layout, round trips, script reloads, TTLs, wake-ups.

The behaviour both backends share is in ``test_jobqueue_contract.py``; these
tests pin what only Redis has (and a few Redis-side checks of the same rules).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from _script_flush import flush_after_reloads
from app_kernel._redis.keys import RedisKeys
from app_kernel.errors import BackendUnavailable
from app_kernel.jobs.backends.base import JobSpec, Priority, RetryPolicy
from app_kernel.jobs.backends.redis import RedisJobQueue

pytestmark = pytest.mark.redis


def _spec(job_id: str | None = None, priority: Priority = "normal", **kwargs: Any) -> JobSpec:
    return JobSpec(
        job_id=job_id or uuid.uuid4().hex,
        task_name="noop",
        payload_json='{"n": 1}',
        priority=priority,
        **kwargs,
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def queue(client: redis.asyncio.Redis, redis_key_prefix: str) -> RedisJobQueue:
    return RedisJobQueue(client, RedisKeys(redis_key_prefix), namespace="q1")


async def _keys(client: redis.asyncio.Redis, prefix: str) -> list[str]:
    return [key.decode() async for key in client.scan_iter(match=f"{prefix}*")]


# --- key layout ------------------------------------------------------------------------


async def test_every_key_has_the_prefix_and_the_namespace_hash_tag(
    client: redis.asyncio.Redis, queue: RedisJobQueue, redis_key_prefix: str
) -> None:
    await queue.enqueue([_spec(p) for p in ("high", "normal", "low")])
    await queue.enqueue([_spec("later", delay_seconds=60)])
    await queue.enqueue([_spec("{odd}:id", max_attempts=1), _spec("cb")])
    await queue.register_worker("w{1}", {"host": "h"}, 60)
    jobs = await queue.claim("w1", 10, lease_seconds=30, weights={"high": 2, "normal": 1, "low": 1})
    by_id = {job.job_id: job for job in jobs}
    await queue.fail(
        "{odd}:id",
        by_id["{odd}:id"].token,
        error="x",
        traceback=None,
        retry_delay_seconds=None,
        dead_ttl_seconds=60,
    )
    await queue.complete("cb", by_id["cb"].token, "1", result_ttl_seconds=60)
    await queue.wait_for_work(0.01)
    await queue.enqueue([_spec("waiting", "low")])

    keys = await _keys(client, redis_key_prefix)

    shape = re.compile(re.escape(redis_key_prefix) + r"jobs:\{q1\}:.+")
    assert len(keys) >= 10
    assert all(shape.fullmatch(key) for key in keys), keys
    assert {key_slot(key.encode()) for key in keys} == {key_slot(b"{q1}")}
    kinds = {key.removeprefix(queue.key_prefix() + ":").split(":")[0] for key in keys}
    assert kinds == {
        "job",
        "q",
        "scheduled",
        "active",
        "dead",
        "round",
        "workers",
        "worker",
        "wake",
    }


async def test_namespaces_do_not_share_keys(
    client: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    keys = RedisKeys(redis_key_prefix)
    first = RedisJobQueue(client, keys, namespace="a")
    second = RedisJobQueue(client, keys, namespace="b")
    await first.enqueue([_spec("same")])

    assert await second.get("same") is None
    assert await second.claim("w", 5, lease_seconds=30) == []
    assert [job.job_id for job in await first.claim("w", 5, lease_seconds=30)] == ["same"]


# --- round trips -----------------------------------------------------------------------


class CountingConnection(redis.asyncio.Connection):
    """Counts writes to the socket: one per command, or per pipeline."""

    sent: ClassVar[list[bytes]] = []

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        type(self).sent.append(packed if isinstance(packed, bytes) else packed.encode())
        await super().send_packed_command(command, check_health)


async def test_one_round_trip_per_operation(redis_url: str, redis_key_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    queue = RedisJobQueue(client, RedisKeys(redis_key_prefix), namespace="trips")
    retry = RetryPolicy()
    state: dict[str, Any] = {}

    async def claim_ten() -> None:
        await queue.enqueue([_spec() for _ in range(10)])
        CountingConnection.sent.clear()
        state["jobs"] = await queue.claim("w", 10, lease_seconds=30)

    async def complete() -> None:
        job = state["jobs"].pop()
        CountingConnection.sent.clear()
        await queue.complete(job.job_id, job.token, "null", result_ttl_seconds=60)

    async def fail() -> None:
        job = state["jobs"].pop()
        CountingConnection.sent.clear()
        await queue.fail(
            job.job_id,
            job.token,
            error="e",
            traceback="tb",
            retry_delay_seconds=None,
            dead_ttl_seconds=60,
            on_failure=_spec(),
        )

    first = lambda: state["jobs"][0]  # noqa: E731
    operations: dict[str, Callable[[], Awaitable[Any]]] = {
        "enqueue_100": lambda: queue.enqueue([_spec() for _ in range(100)]),
        "claim_10": claim_ten,
        "heartbeat": lambda: queue.heartbeat(first().job_id, first().token, 30),
        "progress": lambda: queue.progress(first().job_id, first().token, 0.5, "half"),
        "complete": complete,
        "fail": fail,
        "release": lambda: queue.release(first().job_id, first().token),
        "reap": lambda: queue.reap(retry=retry, dead_ttl_seconds=60),
        "get": lambda: queue.get("nope"),
        "cancel": lambda: queue.cancel("nope"),
        "list_dead": lambda: queue.list_dead(),
        "retry_dead": lambda: queue.retry_dead("nope"),
        "purge_dead": lambda: queue.purge_dead("nope"),
        "status": queue.status,
        "register_worker": lambda: queue.register_worker("w", {"pid": 1}, 60),
        "workers": queue.workers,
        "unregister_worker": lambda: queue.unregister_worker("w"),
    }
    try:
        await claim_ten()  # connect and load every script used below
        for operation in operations.values():
            await operation()
        await claim_ten()
        trips: dict[str, int] = {}
        for name, operation in operations.items():
            for _ in range(3):
                CountingConnection.sent.clear()
                await operation()
                # Another test run may flush the shared server's scripts meanwhile.
                if not any(b"SCRIPT" in sent for sent in CountingConnection.sent):
                    break
            trips[name] = len(CountingConnection.sent)
    finally:
        await client.aclose()

    assert trips == dict.fromkeys(operations, 1)


async def test_scripts_are_reloaded_after_script_flush(
    client: redis.asyncio.Redis, queue: RedisJobQueue
) -> None:
    await queue.enqueue([_spec("a")])
    await client.script_flush()

    outcomes = await queue.enqueue([_spec("b")])
    await client.script_flush()
    jobs = await queue.claim("w", 5, lease_seconds=30)

    assert not outcomes[0].deduplicated
    assert [job.job_id for job in jobs] == ["a", "b"]


async def test_a_flush_between_reload_and_retry_costs_one_more_reload(
    client: redis.asyncio.Redis, queue: RedisJobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = flush_after_reloads(monkeypatch, client, times=1)
    await client.script_flush()

    outcomes = await queue.enqueue([_spec("a")])

    assert left == [0]
    assert [outcome.job_id for outcome in outcomes] == ["a"]


# --- expiry ----------------------------------------------------------------------------


async def test_finished_jobs_expire(client: redis.asyncio.Redis, queue: RedisJobQueue) -> None:
    await queue.enqueue(
        [_spec("ok"), _spec("bad"), _spec("gone"), _spec("later", delay_seconds=60)]
    )
    assert await client.pttl(queue.job_key("ok")) == -1
    by_id = {job.job_id: job for job in await queue.claim("w", 3, lease_seconds=30)}
    await queue.complete("ok", by_id["ok"].token, "1", result_ttl_seconds=100)
    await queue.fail(
        "bad",
        by_id["bad"].token,
        error="e",
        traceback=None,
        retry_delay_seconds=None,
        dead_ttl_seconds=200,
    )
    await queue.cancel("later")

    assert 90_000 < await client.pttl(queue.job_key("ok")) <= 100_000
    assert 190_000 < await client.pttl(queue.job_key("bad")) <= 200_000
    assert await client.pttl(queue.job_key("later")) > 0
    assert await client.pttl(queue.job_key("gone")) == -1  # still running


async def test_expired_dead_records_leave_the_dead_list(queue: RedisJobQueue) -> None:
    await queue.enqueue([_spec("d", max_attempts=1)])
    (job,) = await queue.claim("w", 1, lease_seconds=30)
    await queue.fail(
        "d", job.token, error="e", traceback=None, retry_delay_seconds=1, dead_ttl_seconds=0.2
    )
    assert (await queue.status())["dead"] == 1
    await asyncio.sleep(0.3)

    assert (await queue.status())["dead"] == 0
    assert await queue.list_dead() == []
    assert await queue.get("d") is None


async def test_the_wake_list_stays_bounded(
    client: redis.asyncio.Redis, queue: RedisJobQueue
) -> None:
    for _ in range(3):
        await queue.enqueue([_spec() for _ in range(80)])

    assert await client.llen(f"{queue.key_prefix()}:wake") == 100
    while await queue.claim("w", 100, lease_seconds=30):
        pass
    assert await client.exists(f"{queue.key_prefix()}:wake") == 0


# --- wake-ups --------------------------------------------------------------------------


async def test_wait_for_work_wakes_on_an_enqueue_from_another_client(
    redis_url: str, queue: RedisJobQueue, redis_key_prefix: str
) -> None:
    other = redis.asyncio.Redis.from_url(redis_url)
    producer = RedisJobQueue(other, RedisKeys(redis_key_prefix), namespace="q1")
    try:
        await queue.claim("w", 1, lease_seconds=30)  # drain stale wake-ups
        waiter = asyncio.create_task(queue.wait_for_work(5))
        await asyncio.sleep(0.1)
        assert not waiter.done()

        started = time.perf_counter()
        await producer.enqueue([_spec("x")])
        await waiter
        elapsed = time.perf_counter() - started
    finally:
        await other.aclose()

    assert elapsed < 0.05
    assert [job.job_id for job in await queue.claim("w", 1, lease_seconds=30)] == ["x"]


async def test_wait_for_work_waits_the_full_timeout_when_idle(queue: RedisJobQueue) -> None:
    await queue.claim("w", 1, lease_seconds=30)
    started = time.perf_counter()
    await queue.wait_for_work(0.3)
    elapsed = time.perf_counter() - started

    assert 0.28 < elapsed < 0.45


async def test_wait_for_work_ends_when_a_scheduled_job_falls_due(queue: RedisJobQueue) -> None:
    await queue.enqueue([_spec("soon", delay_seconds=0.2)])
    assert await queue.claim("w", 1, lease_seconds=30) == []

    started = time.perf_counter()
    await queue.wait_for_work(5)
    elapsed = time.perf_counter() - started

    assert elapsed < 0.4
    assert [job.job_id for job in await queue.claim("w", 1, lease_seconds=30)] == ["soon"]


async def test_wait_for_work_outlives_the_socket_timeout(
    redis_url: str, redis_key_prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.1)
    queue = RedisJobQueue(client, RedisKeys(redis_key_prefix), namespace="slow")
    try:
        started = time.perf_counter()
        await queue.wait_for_work(0.4)
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()

    assert elapsed > 0.38


# --- claim order -------------------------------------------------------------------------


async def test_weights_let_few_high_jobs_go_first(queue: RedisJobQueue) -> None:
    await queue.enqueue(
        [_spec(f"L{i}", "low") for i in range(3)] + [_spec(f"H{i}", "high") for i in range(3)]
    )

    jobs = await queue.claim("w", 6, lease_seconds=30, weights={"high": 6, "normal": 3, "low": 1})

    assert [job.job_id for job in jobs] == ["H0", "H1", "H2", "L0", "L1", "L2"]


async def test_weights_hold_across_single_job_claims(queue: RedisJobQueue) -> None:
    await queue.enqueue(
        [_spec(f"{p[0]}{i}", p) for p in ("high", "normal", "low") for i in range(20)]
    )
    weights: dict[Priority, int] = {"high": 3, "normal": 2, "low": 1}

    picked = []
    for _ in range(12):
        (job,) = await queue.claim("w", 1, lease_seconds=30, weights=weights)
        picked.append(job.job_id[0])

    assert "".join(picked) == "hhhnnlhhhnnl"


async def test_unused_picks_pass_to_the_next_priority(queue: RedisJobQueue) -> None:
    await queue.enqueue([_spec(f"{p[0]}{i}", p) for p in ("high", "low") for i in range(10)])

    jobs = await queue.claim("w", 10, lease_seconds=30, weights={"high": 6, "normal": 3, "low": 1})

    assert "".join(job.job_id[0] for job in jobs) == "hhhhhhllll"


async def test_strict_order_and_fifo(queue: RedisJobQueue) -> None:
    await queue.enqueue(
        [_spec("n1"), _spec("l1", "low"), _spec("h1", "high"), _spec("n2"), _spec("h2", "high")]
    )

    jobs = await queue.claim("w", 10, lease_seconds=30)

    assert [job.job_id for job in jobs] == ["h1", "h2", "n1", "n2", "l1"]


async def test_claim_only_the_given_queues(queue: RedisJobQueue) -> None:
    await queue.enqueue([_spec("h", "high"), _spec("l", "low")])

    jobs = await queue.claim("w", 10, lease_seconds=30, queues=("low",))

    assert [job.job_id for job in jobs] == ["l"]
    assert (await queue.status())["queues"] == {"high": 1, "normal": 0, "low": 0}


# --- lifecycle checks on the Redis side ------------------------------------------------


async def test_reap_retries_with_backoff_then_kills(queue: RedisJobQueue) -> None:
    policy = RetryPolicy(base_seconds=0.05, cap_seconds=0.05, min_delay_seconds=0.05)
    await queue.enqueue([_spec("crash", max_attempts=2)])
    (first,) = await queue.claim("w", 1, lease_seconds=0.05)
    await asyncio.sleep(0.1)

    assert await queue.reap(retry=policy, dead_ttl_seconds=60) == 1
    info = await queue.get("crash")
    assert info is not None
    assert info.status == "retrying"
    assert info.error == "lease expired"
    assert await queue.heartbeat("crash", first.token, 30) == (await queue.heartbeat("x", "y", 1))

    await asyncio.sleep(0.1)
    (second,) = await queue.claim("w", 1, lease_seconds=0.05)
    assert second.attempt == 2
    assert second.token != first.token
    await asyncio.sleep(0.1)
    assert await queue.reap(retry=policy, dead_ttl_seconds=60) == 1
    info = await queue.get("crash")
    assert info is not None
    assert info.status == "dead"
    assert [job.job_id for job in await queue.list_dead()] == ["crash"]


async def test_complete_enqueues_on_success_in_the_same_step(queue: RedisJobQueue) -> None:
    await queue.enqueue([_spec("parent", on_success="child_task")])
    (job,) = await queue.claim("w", 1, lease_seconds=30)
    assert job.on_success == "child_task"

    assert await queue.complete(
        "parent", job.token, '{"r": 1}', result_ttl_seconds=60, on_success=_spec("child")
    )
    assert not await queue.complete("parent", job.token, "2", result_ttl_seconds=60)

    info = await queue.get("parent")
    assert info is not None
    assert (info.status, info.result) == ("succeeded", {"r": 1})
    assert [job.job_id for job in await queue.claim("w", 5, lease_seconds=30)] == ["child"]


async def test_dead_jobs_can_be_retried_and_purged(
    queue: RedisJobQueue, client: redis.asyncio.Redis
) -> None:
    await queue.enqueue([_spec(f"d{i}", max_attempts=1) for i in range(3)])
    for job in await queue.claim("w", 3, lease_seconds=30):
        outcome = await queue.fail(
            job.job_id,
            job.token,
            error="e",
            traceback=None,
            retry_delay_seconds=1,
            dead_ttl_seconds=60,
        )
        assert outcome == "dead"
    assert (await queue.status())["dead"] == 3

    assert await queue.retry_dead("d0") == 1
    assert await client.pttl(queue.job_key("d0")) == -1
    assert await queue.purge_dead("d1") == 1
    assert await queue.get("d1") is None
    assert await queue.retry_dead() == 1
    assert await queue.purge_dead() == 0

    jobs = await queue.claim("w", 5, lease_seconds=30)
    assert [(job.job_id, job.attempt) for job in jobs] == [("d0", 1), ("d2", 1)]


async def test_workers_registry(queue: RedisJobQueue) -> None:
    await queue.register_worker("w1", {"pid": 1}, 60)
    await queue.register_worker("w2", {"pid": 2}, 0.1)
    assert sorted(w["worker_id"] for w in await queue.workers()) == ["w1", "w2"]

    await asyncio.sleep(0.15)
    assert await queue.workers() == [{"pid": 1, "worker_id": "w1"}]
    await queue.unregister_worker("w1")
    assert await queue.workers() == []


# --- failures ----------------------------------------------------------------------------


async def test_redis_errors_become_backend_unavailable(redis_key_prefix: str) -> None:
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    queue = RedisJobQueue(client, RedisKeys(redis_key_prefix))
    try:
        with pytest.raises(BackendUnavailable, match="enqueue"):
            await queue.enqueue([_spec()])
        with pytest.raises(BackendUnavailable, match="claim"):
            await queue.claim("w", 1, lease_seconds=30)
        with pytest.raises(BackendUnavailable, match="wait_for_work"):
            await queue.wait_for_work(1)
        with pytest.raises(BackendUnavailable):
            await queue.get("x")
        with pytest.raises(BackendUnavailable):
            await queue.status()
        with pytest.raises(BackendUnavailable):
            await queue.retry_dead()
    finally:
        await client.aclose()


async def test_a_cancelled_wait_gives_its_connection_back_clean(
    client: redis.asyncio.Redis, queue: RedisJobQueue
) -> None:
    waiter = asyncio.create_task(queue.wait_for_work(5))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter

    await queue.enqueue([_spec("after")])
    assert [job.job_id for job in await queue.claim("w", 1, lease_seconds=30)] == ["after"]
    assert await client.ping()
