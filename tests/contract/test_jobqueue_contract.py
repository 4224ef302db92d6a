"""The JobQueue contract, run on the embedded SQLite file and on Redis.

Delays, leases and TTLs are short real durations (Redis counts them on its
own clock). Choices the base protocol leaves open, pinned here for both
backends:

* ``heartbeat``/``complete``/``fail`` accept the current token until the job is
  reaped, even past the lease deadline (the token, not the clock, fences).
* A released job is claimable at once and its next claim carries the same
  attempt number as the released one.
* With weights, a priority without ready jobs hands its unused picks on, and
  the round state spans claim calls (a worker claiming one job at a time is
  still fair). Exact interleaving beyond the documented example is left open.
* ``reap`` moving a job to dead enqueues no ``on_failure`` job (it has no spec).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from app_kernel._redis.keys import RedisKeys
from app_kernel._sqlite.store import SqliteStore
from app_kernel.jobs.backends.base import JobQueue, JobSpec, Priority, RetryPolicy
from app_kernel.jobs.backends.sqlite import SqliteJobQueue

LEASE = 30.0
TTL = 3600.0
NO_BACKOFF = RetryPolicy(base_seconds=0.0, cap_seconds=0.0)
WEIGHTS: dict[Priority, int] = {"high": 6, "normal": 3, "low": 1}


def _id() -> str:
    return uuid.uuid4().hex


def _spec(job_id: str | None = None, **kwargs: Any) -> JobSpec:
    fields: dict[str, Any] = {"task_name": "send_email", "payload_json": '{"n": 1}'}
    fields.update(kwargs)
    return JobSpec(job_id=job_id or _id(), **fields)


# --- fixture -----------------------------------------------------------------------------


@pytest.fixture
async def queue(
    coordination_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[JobQueue]:
    """Each backend in turn: SQLite in ``tmp_path``, or Redis under a unique prefix."""
    if coordination_url is None:
        store = SqliteStore(tmp_path / "kernel.db")
        backend = SqliteJobQueue(store)  # before open(): it registers its schema
        await store.open()
        try:
            yield backend
        finally:
            await store.close()
    else:
        # Imported here: the SQLite runs must not need the Redis backend module.
        from app_kernel.jobs.backends.redis import RedisJobQueue

        prefix: str = request.getfixturevalue("redis_key_prefix")
        client = redis.asyncio.Redis.from_url(coordination_url)
        try:
            yield RedisJobQueue(client, RedisKeys(prefix), namespace="test")
        finally:
            await client.aclose()


async def _claim_one(queue: JobQueue, **kwargs: Any) -> Any:
    claimed = await queue.claim("w1", 1, lease_seconds=kwargs.pop("lease_seconds", LEASE), **kwargs)
    assert len(claimed) == 1
    return claimed[0]


async def _claim_order(queue: JobQueue, n: int, **kwargs: Any) -> list[str]:
    """Job ids of ``n`` claims of one job each."""
    ids = []
    for _ in range(n):
        claimed = await queue.claim("w1", 1, lease_seconds=LEASE, **kwargs)
        ids.extend(c.job_id for c in claimed)
    return ids


# --- enqueue -----------------------------------------------------------------------------


async def test_enqueue_and_get_round_trip(queue: JobQueue) -> None:
    spec = _spec(
        payload_json='{"to": "a@example.com"}',
        priority="high",
        user_id="u1",
        timeout_seconds=12.0,
        max_attempts=5,
        metadata_json='{"source": "api"}',
    )

    [outcome] = await queue.enqueue([spec])
    info = await queue.get(spec.job_id)

    assert outcome.job_id == spec.job_id
    assert outcome.deduplicated is False
    assert info is not None
    assert info.status == "queued"
    assert info.attempt == 0
    assert info.max_attempts == 5
    assert info.task_name == "send_email"
    assert info.priority == "high"
    assert info.payload == {"to": "a@example.com"}
    assert info.metadata == {"source": "api"}
    assert info.user_id == "u1"
    assert info.enqueued_at == pytest.approx(outcome.enqueued_at)
    assert await queue.get(_id()) is None


async def test_enqueue_deduplicates_a_queued_or_running_id(queue: JobQueue) -> None:
    spec = _spec()
    [first] = await queue.enqueue([spec])

    [again] = await queue.enqueue([_spec(spec.job_id, payload_json='"other"')])
    assert again.deduplicated is True
    claimed = await _claim_one(queue)
    [while_running] = await queue.enqueue([_spec(spec.job_id, payload_json='"other"')])

    assert while_running.deduplicated is True
    assert again.enqueued_at == pytest.approx(first.enqueued_at)
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.payload == {"n": 1}
    assert info.status == "running"
    assert claimed.job_id == spec.job_id
    assert await queue.claim("w1", 5, lease_seconds=LEASE) == []


async def test_a_finished_id_can_be_enqueued_again(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)
    assert await queue.complete(spec.job_id, claimed.token, "1", result_ttl_seconds=TTL)

    [outcome] = await queue.enqueue([_spec(spec.job_id, payload_json='"second"')])

    assert outcome.deduplicated is False
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "queued"
    assert info.attempt == 0
    assert info.payload == "second"
    assert info.result is None


async def test_enqueue_many_keeps_order(queue: JobQueue) -> None:
    specs = [_spec(payload_json=str(i)) for i in range(20)]

    outcomes = await queue.enqueue(specs)

    assert [o.job_id for o in outcomes] == [s.job_id for s in specs]
    assert not any(o.deduplicated for o in outcomes)
    claimed = await queue.claim("w1", 20, lease_seconds=LEASE)
    assert [c.job_id for c in claimed] == [s.job_id for s in specs]
    assert [c.payload_json for c in claimed] == [str(i) for i in range(20)]


async def test_enqueue_many_deduplicates_within_one_call(queue: JobQueue) -> None:
    spec = _spec()

    outcomes = await queue.enqueue([spec, _spec(spec.job_id, payload_json='"dup"')])

    assert [o.deduplicated for o in outcomes] == [False, True]
    assert len(await queue.claim("w1", 5, lease_seconds=LEASE)) == 1


async def test_delayed_job_is_scheduled_until_due(queue: JobQueue) -> None:
    spec = _spec(delay_seconds=0.4)
    await queue.enqueue([spec])

    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "scheduled"
    assert (await queue.status())["scheduled"] == 1
    assert await queue.claim("w1", 5, lease_seconds=LEASE) == []

    await asyncio.sleep(0.6)

    claimed = await queue.claim("w1", 5, lease_seconds=LEASE)
    assert [c.job_id for c in claimed] == [spec.job_id]


# --- claim -------------------------------------------------------------------------------


async def test_claim_counts_the_attempt_and_hands_out_a_token(queue: JobQueue) -> None:
    spec = _spec(user_id="u1", max_attempts=4, on_success="notify", on_failure="alert")
    [outcome] = await queue.enqueue([spec])

    claimed = await _claim_one(queue)

    assert claimed.job_id == spec.job_id
    assert claimed.attempt == 1
    assert claimed.max_attempts == 4
    assert claimed.token
    assert claimed.payload_json == spec.payload_json
    assert claimed.task_name == spec.task_name
    assert claimed.user_id == "u1"
    assert claimed.on_success == "notify"
    assert claimed.on_failure == "alert"
    assert claimed.enqueued_at == pytest.approx(outcome.enqueued_at)
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "running"
    assert info.attempt == 1
    assert info.worker_id == "w1"
    assert info.started_at is not None


async def test_claim_respects_the_limit(queue: JobQueue) -> None:
    await queue.enqueue([_spec() for _ in range(5)])

    assert len(await queue.claim("w1", 2, lease_seconds=LEASE)) == 2
    assert len(await queue.claim("w1", 2, lease_seconds=LEASE)) == 2
    assert len(await queue.claim("w1", 2, lease_seconds=LEASE)) == 1
    assert await queue.claim("w1", 2, lease_seconds=LEASE) == []


async def test_fifo_within_a_priority(queue: JobQueue) -> None:
    ids = [_id() for _ in range(6)]
    for job_id in ids:  # separate calls
        await queue.enqueue([_spec(job_id)])

    assert await _claim_order(queue, 6) == ids


async def test_strict_priority_order_without_weights(queue: JobQueue) -> None:
    low = [_spec(priority="low") for _ in range(2)]
    normal = [_spec(priority="normal") for _ in range(2)]
    high = [_spec(priority="high") for _ in range(2)]
    await queue.enqueue([*low, *normal, *high])

    claimed = await queue.claim("w1", 6, lease_seconds=LEASE)

    assert [c.job_id for c in claimed] == [s.job_id for s in (*high, *normal, *low)]


async def test_claim_serves_only_the_given_queues(queue: JobQueue) -> None:
    high, low = _spec(priority="high"), _spec(priority="low")
    await queue.enqueue([high, low])

    claimed = await queue.claim("w1", 5, lease_seconds=LEASE, queues=["low"])

    assert [c.job_id for c in claimed] == [low.job_id]


async def test_weights_take_all_high_jobs_first_when_fewer_than_the_weight(
    queue: JobQueue,
) -> None:
    """The documented example: 3 high + 3 low, one job per claim: H H H L L L."""
    low = [_spec(priority="low") for _ in range(3)]
    high = [_spec(priority="high") for _ in range(3)]
    await queue.enqueue([*low, *high])

    order = await _claim_order(queue, 6, weights=WEIGHTS)

    assert order == [s.job_id for s in (*high, *low)]


async def test_weights_split_a_batch_by_weight(queue: JobQueue) -> None:
    await queue.enqueue([_spec(priority=p) for p in ("low", "normal", "high") for _ in range(20)])

    claimed = await queue.claim("w1", 10, lease_seconds=LEASE, weights=WEIGHTS)

    assert Counter(c.priority for c in claimed) == {"high": 6, "normal": 3, "low": 1}


async def test_weights_do_not_starve_low_under_high_load(queue: JobQueue) -> None:
    """One job per claim, high always waiting: low still gets picks every round."""
    await queue.enqueue([_spec(priority="high") for _ in range(40)])
    await queue.enqueue([_spec(priority="low") for _ in range(10)])

    claims = [(await _claim_one(queue, weights=WEIGHTS)).priority for _ in range(30)]

    assert "low" in claims[:10]
    assert "low" in claims[10:20]
    assert "low" in claims[20:30]
    assert claims.count("high") >= 18  # high keeps at least its 6 of every 10


# --- complete / fail ---------------------------------------------------------------------


async def test_complete_with_the_right_token(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)

    done = await queue.complete(spec.job_id, claimed.token, '{"ok": true}', result_ttl_seconds=TTL)

    assert done is True
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "succeeded"
    assert info.result == {"ok": True}
    assert info.finished_at is not None
    assert await queue.complete(spec.job_id, claimed.token, "2", result_ttl_seconds=TTL) is False


async def test_complete_with_a_wrong_or_old_token_changes_nothing(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    first = await _claim_one(queue)
    assert await queue.release(spec.job_id, first.token)
    second = await _claim_one(queue)

    assert await queue.complete(spec.job_id, "wrong", "1", result_ttl_seconds=TTL) is False
    assert await queue.complete(spec.job_id, first.token, "1", result_ttl_seconds=TTL) is False
    assert await queue.complete(_id(), second.token, "1", result_ttl_seconds=TTL) is False

    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "running"
    assert info.result is None
    assert (await queue.heartbeat(spec.job_id, second.token, LEASE)).owned is True


async def test_fail_with_a_retry_delay_retries_after_it(queue: JobQueue) -> None:
    spec = _spec(max_attempts=3)
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)

    outcome = await queue.fail(
        spec.job_id,
        claimed.token,
        error="boom",
        traceback="Traceback ...",
        retry_delay_seconds=0.4,
        dead_ttl_seconds=TTL,
    )

    assert outcome == "retrying"
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "retrying"
    assert info.error == "boom"
    assert (await queue.status())["scheduled"] == 1
    assert await queue.claim("w1", 5, lease_seconds=LEASE) == []
    assert (await queue.heartbeat(spec.job_id, claimed.token, LEASE)).owned is False

    await asyncio.sleep(0.6)

    again = await _claim_one(queue)
    assert again.job_id == spec.job_id
    assert again.attempt == 2
    assert again.token != claimed.token


async def test_fail_without_retry_delay_is_dead(queue: JobQueue) -> None:
    spec = _spec(max_attempts=3)
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)

    outcome = await queue.fail(
        spec.job_id,
        claimed.token,
        error="bad input",
        traceback=None,
        retry_delay_seconds=None,
        dead_ttl_seconds=TTL,
    )

    assert outcome == "dead"
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "dead"


async def test_fail_on_the_last_attempt_is_dead(queue: JobQueue) -> None:
    spec = _spec(max_attempts=1)
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)

    outcome = await queue.fail(
        spec.job_id,
        claimed.token,
        error="ValueError: nope",
        traceback="Traceback (most recent call last): ...",
        retry_delay_seconds=0.0,
        dead_ttl_seconds=TTL,
    )

    assert outcome == "dead"
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "dead"
    assert info.attempt == 1
    assert info.error == "ValueError: nope"
    assert info.traceback == "Traceback (most recent call last): ..."
    assert info.finished_at is not None
    assert [d.job_id for d in await queue.list_dead()] == [spec.job_id]
    assert await queue.claim("w1", 5, lease_seconds=LEASE) == []


async def test_fail_with_a_wrong_token_is_lost(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    await _claim_one(queue)

    outcome = await queue.fail(
        spec.job_id,
        "wrong",
        error="x",
        traceback=None,
        retry_delay_seconds=None,
        dead_ttl_seconds=TTL,
    )

    assert outcome == "lost"
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "running"
    assert info.error is None


async def test_on_success_is_enqueued_with_the_completion(queue: JobQueue) -> None:
    spec = _spec()
    follow_up = _spec(task_name="notify", payload_json='{"after": "done"}')
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)

    assert await queue.complete(
        spec.job_id, claimed.token, "1", result_ttl_seconds=TTL, on_success=follow_up
    )

    info = await queue.get(follow_up.job_id)
    assert info is not None
    assert info.status == "queued"
    assert info.task_name == "notify"
    assert info.payload == {"after": "done"}


async def test_on_success_is_not_enqueued_when_fenced_off(queue: JobQueue) -> None:
    spec = _spec()
    follow_up = _spec(task_name="notify")
    await queue.enqueue([spec])
    await _claim_one(queue)

    assert not await queue.complete(
        spec.job_id, "wrong", "1", result_ttl_seconds=TTL, on_success=follow_up
    )

    assert await queue.get(follow_up.job_id) is None


async def test_on_failure_is_enqueued_when_the_job_dies(queue: JobQueue) -> None:
    spec = _spec(max_attempts=2)
    follow_up = _spec(task_name="alert", payload_json='{"failed": true}')
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)

    retrying = await queue.fail(
        spec.job_id,
        claimed.token,
        error="e1",
        traceback=None,
        retry_delay_seconds=0.0,
        dead_ttl_seconds=TTL,
        on_failure=follow_up,
    )
    assert retrying == "retrying"
    assert await queue.get(follow_up.job_id) is None

    again = await _claim_one(queue)
    assert again.job_id == spec.job_id
    dead = await queue.fail(
        spec.job_id,
        again.token,
        error="e2",
        traceback=None,
        retry_delay_seconds=0.0,
        dead_ttl_seconds=TTL,
        on_failure=follow_up,
    )

    assert dead == "dead"
    info = await queue.get(follow_up.job_id)
    assert info is not None
    assert info.status == "queued"
    assert info.payload == {"failed": True}


# --- heartbeat / reap / release ----------------------------------------------------------


async def test_heartbeat_extends_the_lease(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    claimed = await _claim_one(queue, lease_seconds=0.4)

    await asyncio.sleep(0.2)
    reply = await queue.heartbeat(spec.job_id, claimed.token, 2.0)
    assert reply.owned is True
    assert reply.cancel_requested is False
    await asyncio.sleep(0.4)  # past the first deadline

    assert await queue.reap(retry=NO_BACKOFF, dead_ttl_seconds=TTL) == 0
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "running"
    assert await queue.complete(spec.job_id, claimed.token, "1", result_ttl_seconds=TTL)
    assert (await queue.heartbeat(spec.job_id, claimed.token, LEASE)).owned is False


async def test_heartbeat_with_a_wrong_token_or_unknown_job(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    await _claim_one(queue)

    assert (await queue.heartbeat(spec.job_id, "wrong", LEASE)).owned is False
    assert (await queue.heartbeat(_id(), "wrong", LEASE)).owned is False


async def test_reap_retries_an_expired_lease_and_fences_the_old_token(queue: JobQueue) -> None:
    spec = _spec(max_attempts=3)
    await queue.enqueue([spec])
    claimed = await _claim_one(queue, lease_seconds=0.2)

    assert await queue.reap(retry=NO_BACKOFF, dead_ttl_seconds=TTL) == 0
    await asyncio.sleep(0.4)
    assert await queue.reap(retry=NO_BACKOFF, dead_ttl_seconds=TTL) == 1

    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status in {"retrying", "queued"}
    assert info.attempt == 1
    assert info.error == "lease expired"
    assert (await queue.heartbeat(spec.job_id, claimed.token, LEASE)).owned is False
    assert not await queue.complete(spec.job_id, claimed.token, "1", result_ttl_seconds=TTL)
    again = await _claim_one(queue)
    assert again.attempt == 2


async def test_a_job_that_crashes_every_time_ends_dead(queue: JobQueue) -> None:
    spec = _spec(max_attempts=3)
    await queue.enqueue([spec])

    claims = 0
    for _ in range(5):
        claimed = await queue.claim("w1", 1, lease_seconds=0.1)
        if not claimed:
            break
        claims += 1
        assert claimed[0].attempt == claims
        await asyncio.sleep(0.25)
        assert await queue.reap(retry=NO_BACKOFF, dead_ttl_seconds=TTL) == 1

    assert claims == 3
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "dead"
    assert info.attempt == 3
    assert info.error == "lease expired"


async def test_reap_respects_its_limit(queue: JobQueue) -> None:
    await queue.enqueue([_spec() for _ in range(3)])
    await queue.claim("w1", 3, lease_seconds=0.1)
    await asyncio.sleep(0.3)

    assert await queue.reap(retry=NO_BACKOFF, dead_ttl_seconds=TTL, limit=2) == 2
    assert await queue.reap(retry=NO_BACKOFF, dead_ttl_seconds=TTL, limit=2) == 1
    assert await queue.reap(retry=NO_BACKOFF, dead_ttl_seconds=TTL, limit=2) == 0


async def test_release_requeues_without_spending_the_attempt(queue: JobQueue) -> None:
    spec = _spec(max_attempts=1)
    await queue.enqueue([spec])
    first = await _claim_one(queue)

    assert await queue.release(spec.job_id, "wrong") is False
    assert await queue.release(spec.job_id, first.token) is True

    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "queued"
    assert (await queue.heartbeat(spec.job_id, first.token, LEASE)).owned is False
    assert await queue.release(spec.job_id, first.token) is False
    second = await _claim_one(queue)
    assert second.job_id == spec.job_id
    assert second.attempt == first.attempt == 1
    # The released attempt was given back: failing this one is still the last attempt.
    outcome = await queue.fail(
        spec.job_id,
        second.token,
        error="x",
        traceback=None,
        retry_delay_seconds=0.0,
        dead_ttl_seconds=TTL,
    )
    assert outcome == "dead"


async def test_progress_is_stored_for_the_owner(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)

    assert await queue.progress(spec.job_id, claimed.token, 0.5, "halfway") is True
    assert await queue.progress(spec.job_id, "wrong", 0.9, "nope") is False

    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.progress == pytest.approx(0.5)
    assert info.progress_message == "halfway"


# --- cancel ------------------------------------------------------------------------------


async def test_cancel_a_queued_job(queue: JobQueue) -> None:
    spec, other = _spec(), _spec()
    await queue.enqueue([spec, other])

    assert await queue.cancel(spec.job_id) is True

    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "cancelled"
    claimed = await queue.claim("w1", 5, lease_seconds=LEASE)
    assert [c.job_id for c in claimed] == [other.job_id]
    assert await queue.cancel(spec.job_id) is False


async def test_cancel_a_scheduled_job(queue: JobQueue) -> None:
    spec = _spec(delay_seconds=0.2)
    await queue.enqueue([spec])

    assert await queue.cancel(spec.job_id) is True
    await asyncio.sleep(0.4)

    assert await queue.claim("w1", 5, lease_seconds=LEASE) == []
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "cancelled"


async def test_cancel_a_running_job_asks_its_worker(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)
    assert (await queue.heartbeat(spec.job_id, claimed.token, LEASE)).cancel_requested is False

    assert await queue.cancel(spec.job_id) is True

    reply = await queue.heartbeat(spec.job_id, claimed.token, LEASE)
    assert reply.owned is True
    assert reply.cancel_requested is True


async def test_cancel_waiting_only_leaves_a_running_job_alone(queue: JobQueue) -> None:
    """What the request-metrics recorder asks of a batch: drop it only if it still waits."""
    running, waiting, scheduled = _spec(), _spec(), _spec(delay_seconds=30)
    await queue.enqueue([running])
    claimed = await _claim_one(queue)
    await queue.enqueue([waiting, scheduled])

    assert await queue.cancel(running.job_id, waiting_only=True) is False
    reply = await queue.heartbeat(running.job_id, claimed.token, LEASE)
    assert reply.owned is True
    assert reply.cancel_requested is False
    info = await queue.get(running.job_id)
    assert info is not None
    assert info.status == "running"

    assert await queue.cancel(waiting.job_id, waiting_only=True) is True
    assert await queue.cancel(scheduled.job_id, waiting_only=True) is True
    assert await queue.cancel(_id(), waiting_only=True) is False
    for job_id in (waiting.job_id, scheduled.job_id):
        info = await queue.get(job_id)
        assert info is not None
        assert info.status == "cancelled"
    assert await queue.claim("w2", 5, lease_seconds=LEASE) == []


async def test_cancel_a_finished_or_unknown_job(queue: JobQueue) -> None:
    spec = _spec()
    await queue.enqueue([spec])
    claimed = await _claim_one(queue)
    await queue.complete(spec.job_id, claimed.token, "1", result_ttl_seconds=TTL)

    assert await queue.cancel(spec.job_id) is False
    assert await queue.cancel(_id()) is False
    info = await queue.get(spec.job_id)
    assert info is not None
    assert info.status == "succeeded"


# --- dead letters ------------------------------------------------------------------------


async def _kill(queue: JobQueue, count: int) -> list[str]:
    """Enqueue ``count`` one-attempt jobs and fail each to dead, in order."""
    ids = []
    for i in range(count):
        spec = _spec(max_attempts=1, payload_json=str(i))
        await queue.enqueue([spec])
        claimed = await _claim_one(queue)
        outcome = await queue.fail(
            spec.job_id,
            claimed.token,
            error=f"e{i}",
            traceback=None,
            retry_delay_seconds=None,
            dead_ttl_seconds=TTL,
        )
        assert outcome == "dead"
        ids.append(spec.job_id)
        await asyncio.sleep(0.01)  # distinct finish times
    return ids


async def test_list_dead_most_recent_first(queue: JobQueue) -> None:
    ids = await _kill(queue, 3)

    dead = await queue.list_dead()

    assert [d.job_id for d in dead] == ids[::-1]
    assert [d.error for d in dead] == ["e2", "e1", "e0"]
    assert [d.job_id for d in await queue.list_dead(limit=1, offset=1)] == [ids[1]]


async def test_retry_one_dead_job_with_fresh_attempts(queue: JobQueue) -> None:
    ids = await _kill(queue, 2)

    assert await queue.retry_dead(ids[0]) == 1
    assert await queue.retry_dead(ids[0]) == 0
    assert await queue.retry_dead(_id()) == 0

    assert [d.job_id for d in await queue.list_dead()] == [ids[1]]
    info = await queue.get(ids[0])
    assert info is not None
    assert info.status == "queued"
    assert info.attempt == 0
    claimed = await _claim_one(queue)
    assert claimed.job_id == ids[0]
    assert claimed.attempt == 1


async def test_retry_all_dead_jobs(queue: JobQueue) -> None:
    ids = await _kill(queue, 3)

    assert await queue.retry_dead() == 3

    assert await queue.list_dead() == []
    claimed = await queue.claim("w1", 10, lease_seconds=LEASE)
    assert sorted(c.job_id for c in claimed) == sorted(ids)
    assert all(c.attempt == 1 for c in claimed)


async def test_purge_dead(queue: JobQueue) -> None:
    ids = await _kill(queue, 3)

    assert await queue.purge_dead(ids[0]) == 1
    assert await queue.purge_dead(ids[0]) == 0
    assert await queue.get(ids[0]) is None
    assert await queue.purge_dead() == 2
    assert await queue.list_dead() == []
    assert (await queue.status())["dead"] == 0


# --- status, workers, expiry -------------------------------------------------------------


async def test_status_counts(queue: JobQueue) -> None:
    await _kill(queue, 1)
    high = _spec(priority="high")
    await queue.enqueue(
        [
            high,
            *(_spec(priority="normal") for _ in range(2)),
            *(_spec(priority="low") for _ in range(3)),
            _spec(delay_seconds=60),
        ]
    )
    claimed = await _claim_one(queue)
    assert claimed.job_id == high.job_id
    retrying = await queue.fail(
        high.job_id,
        claimed.token,
        error="x",
        traceback=None,
        retry_delay_seconds=60,
        dead_ttl_seconds=TTL,
    )
    assert retrying == "retrying"
    await _claim_one(queue)  # a normal job

    status = await queue.status()
    assert 0 <= status.pop("oldest_waiting_seconds") < 30
    assert status == {
        "queues": {"high": 0, "normal": 1, "low": 3},
        "scheduled": 2,
        "running": 1,
        "dead": 1,
    }


async def test_status_reports_how_long_the_oldest_runnable_job_has_waited(
    queue: JobQueue,
) -> None:
    assert (await queue.status())["oldest_waiting_seconds"] == 0.0
    await queue.enqueue([_spec(delay_seconds=60)])  # not runnable yet: not waiting
    assert (await queue.status())["oldest_waiting_seconds"] == 0.0

    await queue.enqueue([_spec(priority="low")])
    await asyncio.sleep(0.3)
    await queue.enqueue([_spec(priority="high")])  # newer: the low one stays the oldest
    first = (await queue.status())["oldest_waiting_seconds"]
    assert 0.3 <= first < 5

    await queue.enqueue([_spec(delay_seconds=0.1)])  # falls due, nobody promotes it
    await asyncio.sleep(0.3)
    second = (await queue.status())["oldest_waiting_seconds"]
    assert first + 0.3 <= second < first + 5

    await queue.claim("w1", 5, lease_seconds=LEASE)  # takes all three runnable jobs
    assert (await queue.status())["oldest_waiting_seconds"] == 0.0


async def test_workers_register_renew_and_expire(queue: JobQueue) -> None:
    await queue.register_worker("w1", {"host": "a", "pid": 1}, 0.5)
    await queue.register_worker("w2", {"host": "b", "pid": 2}, 30)

    workers = {w["worker_id"]: w for w in await queue.workers()}
    assert set(workers) == {"w1", "w2"}
    assert workers["w1"]["host"] == "a"
    assert workers["w2"]["pid"] == 2

    await queue.unregister_worker("w2")
    assert [w["worker_id"] for w in await queue.workers()] == ["w1"]
    await asyncio.sleep(0.3)
    await queue.register_worker("w1", {"host": "a", "pid": 1}, 0.5)  # renewed
    await asyncio.sleep(0.3)
    assert [w["worker_id"] for w in await queue.workers()] == ["w1"]
    await asyncio.sleep(0.4)
    assert await queue.workers() == []


async def test_finished_records_expire(queue: JobQueue) -> None:
    done, dead = _spec(), _spec(max_attempts=1)
    await queue.enqueue([done, dead])
    a, b = await queue.claim("w1", 2, lease_seconds=LEASE)
    assert await queue.complete(done.job_id, a.token, "1", result_ttl_seconds=0.5)
    failed = await queue.fail(
        dead.job_id,
        b.token,
        error="x",
        traceback=None,
        retry_delay_seconds=None,
        dead_ttl_seconds=0.5,
    )
    assert failed == "dead"
    assert await queue.get(done.job_id) is not None
    assert len(await queue.list_dead()) == 1

    await asyncio.sleep(0.8)

    assert await queue.get(done.job_id) is None
    assert await queue.get(dead.job_id) is None
    assert await queue.list_dead() == []
    assert (await queue.status())["dead"] == 0
    [outcome] = await queue.enqueue([_spec(done.job_id)])
    assert outcome.deduplicated is False


# --- concurrency and odd input -----------------------------------------------------------


async def test_concurrent_claims_hand_each_job_to_one_claimer(queue: JobQueue) -> None:
    specs = [_spec() for _ in range(10)]
    await queue.enqueue(specs)

    results = await asyncio.gather(
        *(queue.claim(f"w{i}", 1, lease_seconds=LEASE) for i in range(50))
    )

    claimed = [c.job_id for batch in results for c in batch]
    assert sorted(claimed) == sorted(s.job_id for s in specs)
    assert len({c.token for batch in results for c in batch}) == 10


async def test_wait_for_work_returns_when_a_job_is_ready(queue: JobQueue) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await queue.wait_for_work(0.2)  # nothing to do: times out
    assert loop.time() - started >= 0.15

    async def enqueue_later() -> None:
        await asyncio.sleep(0.1)
        await queue.enqueue([_spec()])

    task = asyncio.create_task(enqueue_later())
    started = loop.time()
    await queue.wait_for_work(5.0)
    await task
    assert loop.time() - started < 1.0
    assert len(await queue.claim("w1", 1, lease_seconds=LEASE)) == 1


WEIRD_IDS = [
    "ünïcödé 用户 🔑",
    "{braces}",
    "a{b}c:with:colons and spaces",
    "\x00nul\r\n",
    "x" * 200,
]


@pytest.mark.parametrize("job_id", WEIRD_IDS)
async def test_weird_ids_and_text_round_trip(queue: JobQueue, job_id: str) -> None:
    payload = json.dumps({"text": "ünïcödé 🔑 " + "y" * 10_000}, ensure_ascii=False)
    spec = _spec(job_id, payload_json=payload, task_name="tâche", user_id=job_id)

    [outcome] = await queue.enqueue([spec])
    assert outcome.job_id == job_id
    claimed = await _claim_one(queue)

    assert claimed.job_id == job_id
    assert claimed.payload_json == payload
    assert claimed.user_id == job_id
    assert await queue.progress(job_id, claimed.token, 0.1, "ünï 🔑")
    assert await queue.complete(job_id, claimed.token, payload, result_ttl_seconds=TTL)
    info = await queue.get(job_id)
    assert info is not None
    assert info.job_id == job_id
    assert info.task_name == "tâche"
    assert info.payload == json.loads(payload)
    assert info.result == json.loads(payload)
    assert info.progress_message == "ünï 🔑"
