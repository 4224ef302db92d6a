"""AuditLogger over SqlAuditStore on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app_kernel.db.engine import Database
from app_kernel.errors import BackendUnavailable
from app_kernel.observability.audit import (
    AuditEvent,
    AuditLogger,
    SqlAuditStore,
    audit_events_table,
)
from app_kernel.observability.context import request_client_ip, request_id


@pytest.fixture
async def database(sql_database_url: str) -> AsyncIterator[Database]:
    db = Database(sql_database_url)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def audit(database: Database) -> AuditLogger:
    return AuditLogger(SqlAuditStore(database))


async def _count(database: Database) -> int:
    async with database.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(audit_events_table))).scalar_one()
        )


async def _log_spaced(audit: AuditLogger, *actions: str, **fields: Any) -> list[AuditEvent]:
    """Log one event per action, a few milliseconds apart so their order is certain."""
    events = []
    for action in actions:
        events.append(await audit.log(action, **fields))
        await asyncio.sleep(0.002)
    return events


async def test_logged_event_round_trips(audit: AuditLogger) -> None:
    event = await audit.log(
        "user.login",
        actor_id="u1",
        resource_type="session",
        resource_id="s1",
        request_id="req-1",
        ip_address="203.0.113.7",
        user_agent="curl/8",
        metadata={"method": "password", "attempt": 2, "ok": True, "ratio": 0.5},
    )

    [stored] = await audit.query(actor_id="u1")

    assert stored == event
    assert stored.to_dict()["metadata"] == {
        "method": "password",
        "attempt": 2,
        "ok": True,
        "ratio": 0.5,
    }
    assert len(stored.id) == 32
    assert stored.status == "success"
    assert stored.actor_type == "user"


async def test_timestamps_come_back_utc_aware(audit: AuditLogger) -> None:
    before = datetime.now(UTC)
    event = await audit.log("thing.done")

    [stored] = await audit.query()

    assert stored.timestamp.tzinfo is not None
    assert stored.timestamp.utcoffset() == timedelta(0)
    assert stored.timestamp == event.timestamp
    assert before <= stored.timestamp <= datetime.now(UTC)
    assert stored.to_dict()["timestamp"].endswith("+00:00")


async def test_query_filters_combine(audit: AuditLogger) -> None:
    await audit.log("doc.read", actor_id="alice", resource_type="document", resource_id="d1")
    await audit.log("doc.delete", actor_id="alice", resource_type="document", resource_id="d2")
    await audit.log(
        "doc.delete", status="failure", actor_id="bob", resource_type="document", resource_id="d1"
    )
    await audit.log("project.create", actor_id="bob", resource_type="project", resource_id="d1")

    def actions(events: list[AuditEvent]) -> set[tuple[str, str | None]]:
        return {(e.action, e.actor_id) for e in events}

    assert actions(await audit.query(actor_id="alice")) == {
        ("doc.read", "alice"),
        ("doc.delete", "alice"),
    }
    assert actions(await audit.query(action="doc.delete")) == {
        ("doc.delete", "alice"),
        ("doc.delete", "bob"),
    }
    assert actions(await audit.query(resource_type="document", resource_id="d1")) == {
        ("doc.read", "alice"),
        ("doc.delete", "bob"),
    }
    assert actions(await audit.query(status="failure")) == {("doc.delete", "bob")}
    assert (
        actions(await audit.query(action="doc.delete", actor_id="bob", status="success")) == set()
    )


async def test_after_and_before_are_exclusive_bounds(audit: AuditLogger) -> None:
    first, second, third = await _log_spaced(audit, "a.one", "a.two", "a.three")

    between = await audit.query(after=first.timestamp, before=third.timestamp)
    assert [e.id for e in between] == [second.id]

    later = await audit.query(after=first.timestamp)
    assert [e.id for e in later] == [third.id, second.id]


async def test_time_bounds_in_other_zones_and_naive_mean_the_same_instant(
    audit: AuditLogger,
) -> None:
    first, second = await _log_spaced(audit, "z.one", "z.two")
    plus_two = first.timestamp.astimezone(timezone(timedelta(hours=2)))
    naive_utc = first.timestamp.replace(tzinfo=None)

    assert [e.id for e in await audit.query(after=plus_two)] == [second.id]
    assert [e.id for e in await audit.query(after=naive_utc)] == [second.id]


async def test_newest_first_with_limit_and_offset(audit: AuditLogger) -> None:
    events = await _log_spaced(audit, *(f"step.{n}" for n in range(5)))
    newest_first = [e.id for e in reversed(events)]

    assert [e.id for e in await audit.query()] == newest_first
    assert [e.id for e in await audit.query(limit=2)] == newest_first[:2]
    assert [e.id for e in await audit.query(limit=2, offset=2)] == newest_first[2:4]
    assert [e.id for e in await audit.query(limit=2, offset=4)] == newest_first[4:]
    assert await audit.query(offset=5) == []


async def test_limit_is_clamped_to_1_through_1000(audit: AuditLogger) -> None:
    await _log_spaced(audit, "c.one", "c.two")

    assert len(await audit.query(limit=0)) == 1
    assert len(await audit.query(limit=-5)) == 1
    assert len(await audit.query(limit=10**9)) == 2
    assert len(await audit.query(offset=-3)) == 2


async def test_credentials_in_metadata_are_redacted_before_storage(
    audit: AuditLogger, database: Database
) -> None:
    await audit.log(
        "user.login",
        actor_id="u1",
        metadata={
            "password": "hunter2",
            "new_password": "hunter3",
            "access_token": "eyJ...",
            "client_secret": "s3cr3t",
            "Authorization": "Bearer abc.def.ghi",
            "api_key": "ak_live_123",
            "x-api-key": "ak_live_456",
            "nested": {"refresh_token": "r1", "deeper": [{"apiKey": "k"}]},
            "note": "retried with Bearer abc.def.ghi",
            "dsn": "postgresql://app:pw@db/app",
            "email": "a@example.com",
        },
    )

    async with database.engine.connect() as conn:
        raw = (await conn.execute(select(audit_events_table.c["metadata"]))).scalar_one()

    for stored in (raw, (await audit.query())[0].metadata):
        text = repr(stored)
        for secret in ("hunter2", "hunter3", "eyJ", "s3cr3t", "abc.def", "ak_live", "r1", "pw@"):
            assert secret not in text
        assert stored["password"] == "[redacted]"
        assert stored["nested"]["refresh_token"] == "[redacted]"
        assert stored["nested"]["deeper"] == [{"apiKey": "[redacted]"}]
        assert stored["email"] == "a@example.com"


async def test_ids_holding_nul_or_lone_surrogates_are_stored_on_both_databases(
    audit: AuditLogger,
) -> None:
    """An app auditing a path parameter of ``/files/%00`` must not fail its own
    transaction on PostgreSQL (which refuses NUL) while SQLite takes it."""
    await audit.log("file.read", resource_id="report\x00.pdf", actor_id="u\ud800")
    (event,) = await audit.query(action="file.read")
    assert (event.resource_id, event.actor_id) == ("report\ufffd.pdf", "u\ufffd")
    # Searching with the text as the app has it finds the event, on both databases.
    assert await audit.query(resource_id="report\x00.pdf", actor_id="u\ud800") == [event]


async def test_request_id_and_ip_default_to_the_current_request(audit: AuditLogger) -> None:
    rid_token = request_id.set("req-abc")
    ip_token = request_client_ip.set("198.51.100.4")
    try:
        implicit = await audit.log("ctx.implicit")
        explicit = await audit.log("ctx.explicit", request_id="req-given", ip_address="192.0.2.1")
    finally:
        request_client_ip.reset(ip_token)
        request_id.reset(rid_token)
    outside = await audit.log("ctx.none")

    by_action = {e.action: e for e in await audit.query()}
    assert (by_action["ctx.implicit"].request_id, by_action["ctx.implicit"].ip_address) == (
        "req-abc",
        "198.51.100.4",
    )
    assert (explicit.request_id, explicit.ip_address) == ("req-given", "192.0.2.1")
    assert implicit.request_id == "req-abc"
    assert (outside.request_id, outside.ip_address) == (None, None)


async def test_write_in_a_rolled_back_session_leaves_no_row(
    audit: AuditLogger, database: Database
) -> None:
    async with database.sessions() as session:
        await audit.log("tx.rolled_back", session=session)
        await session.rollback()

    assert await _count(database) == 0


async def test_write_in_a_session_is_kept_only_when_it_commits(
    audit: AuditLogger, database: Database
) -> None:
    async with database.sessions() as session:
        event = await audit.log("tx.committed", session=session)
        # Not committed yet: another connection does not see it.
        assert await audit.query() == []
        await session.commit()

    assert [e.id for e in await audit.query()] == [event.id]


async def test_session_closed_without_commit_discards_the_event(
    audit: AuditLogger, database: Database
) -> None:
    async with database.sessions() as session:
        await audit.log("tx.abandoned", session=session)

    assert await _count(database) == 0


async def test_store_failure_is_backend_unavailable(tmp_path: Path) -> None:
    """A database whose tables were never created: the driver error is wrapped."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    audit = AuditLogger(SqlAuditStore(database))
    try:
        with pytest.raises(BackendUnavailable, match="audit store"):
            await audit.log("x.y")
        with pytest.raises(BackendUnavailable, match="audit store"):
            await audit.query()
    finally:
        await database.close()


async def test_metadata_holding_nul_or_lone_surrogates_is_stored_on_both_databases(
    audit: AuditLogger,
) -> None:
    """Metadata text is stored as ids are: NUL and lone surrogates become U+FFFD."""
    await audit.log(
        "file.read", metadata={"name": "report\x00.pdf", "note\ud800": ["x\udfff", {"k": "\x00"}]}
    )
    (event,) = await audit.query(action="file.read")
    expected = {"name": "report\ufffd.pdf", "note\ufffd": ["x\ufffd", {"k": "\ufffd"}]}
    assert event.metadata == expected
