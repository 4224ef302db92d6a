"""AuditLogger behaviour that does not depend on the store: validation, scrubbing, wiring."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app_kernel import _runtime
from app_kernel.errors import KernelError, KernelNotInitialized
from app_kernel.observability.audit import (
    MAX_METADATA_BYTES,
    AuditEvent,
    AuditLogger,
    get_audit,
)


class MemoryStore:
    """An AuditStore keeping events in a list."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.sessions: list[AsyncSession | None] = []
        self.queries: list[dict[str, Any]] = []

    async def write(self, event: AuditEvent, *, session: AsyncSession | None = None) -> None:
        self.events.append(event)
        self.sessions.append(session)

    async def query(self, **filters: Any) -> list[AuditEvent]:
        self.queries.append(filters)
        return list(reversed(self.events))


class Colour(enum.Enum):
    RED = "red"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def audit(store: MemoryStore) -> AuditLogger:
    return AuditLogger(store)


async def test_log_without_a_store_says_what_to_call() -> None:
    audit = AuditLogger()

    with pytest.raises(KernelError, match=r"set_store") as caught:
        await audit.log("user.login")
    assert "init_app_kernel" in str(caught.value)
    with pytest.raises(KernelError, match=r"set_store"):
        await audit.query()


async def test_set_store_makes_the_logger_usable(store: MemoryStore) -> None:
    audit = AuditLogger()
    audit.set_store(store)

    event = await audit.log("user.login", actor_id="u1")

    assert store.events == [event]


def test_get_audit_before_init_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "_current", None)

    with pytest.raises(KernelNotInitialized, match=r"get_audit\(\)"):
        get_audit()


def test_get_audit_returns_the_current_kernels_logger(
    monkeypatch: pytest.MonkeyPatch, audit: AuditLogger
) -> None:
    class FakeKernel:
        pass

    kernel = FakeKernel()
    kernel.audit = audit  # type: ignore[attr-defined]
    monkeypatch.setattr(_runtime, "_current", kernel)

    assert get_audit() is audit


@pytest.mark.parametrize("action", ["", "   ", "x" * 129])
async def test_action_must_be_1_to_128_characters(audit: AuditLogger, action: str) -> None:
    with pytest.raises(ValueError, match="audit action"):
        await audit.log(action)


async def test_action_of_128_characters_is_accepted(audit: AuditLogger) -> None:
    event = await audit.log("a" * 128)
    assert event.action == "a" * 128


async def test_empty_status_is_rejected(audit: AuditLogger) -> None:
    with pytest.raises(ValueError, match="audit status"):
        await audit.log("x.y", status="")


async def test_long_ids_and_user_agent_are_cut_to_column_sizes(audit: AuditLogger) -> None:
    event = await audit.log("x.y", actor_id="a" * 300, resource_id="r" * 300, user_agent="u" * 2000)
    assert len(event.actor_id or "") == 255
    assert len(event.resource_id or "") == 255
    assert len(event.user_agent or "") == 512


async def test_metadata_is_made_json_ready(audit: AuditLogger) -> None:
    ident = uuid.UUID(int=1)
    event = await audit.log(
        "x.y",
        metadata={
            "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            "day": date(2024, 1, 2),
            "ids": (1, 2),
            "tags": {"one"},
            "uuid": ident,
            "colour": Colour.RED,
            "nan": float("nan"),
            7: "int key",  # type: ignore[dict-item]
        },
    )

    assert event.metadata == {
        "when": "2024-01-02T03:04:05+00:00",
        "day": "2024-01-02",
        "ids": [1, 2],
        "tags": ["one"],
        "uuid": str(ident),
        "colour": "red",
        "nan": "nan",
        "7": "int key",
    }
    json.dumps(event.to_dict(), allow_nan=False)


async def test_deep_metadata_is_cut(audit: AuditLogger) -> None:
    deep: dict[str, Any] = {"leaf": "x"}
    for _ in range(20):
        deep = {"d": deep}

    event = await audit.log("x.y", metadata=deep)

    assert "[truncated]" in json.dumps(event.metadata)
    assert "leaf" not in json.dumps(event.metadata)


async def test_metadata_over_16_kb_is_truncated_and_marked(audit: AuditLogger) -> None:
    event = await audit.log(
        "x.y", metadata={"small": "kept", "huge": "x" * 40_000, "after": "also kept"}
    )

    size = len(json.dumps(event.metadata).encode())
    assert size <= MAX_METADATA_BYTES
    assert event.metadata == {
        "_truncated": True,
        "small": "kept",
        "huge": "[truncated]",
        "after": "also kept",
    }


async def test_many_keys_over_16_kb_keep_what_fits(audit: AuditLogger) -> None:
    metadata = {f"k{n}": "v" * 100 for n in range(500)}

    event = await audit.log("x.y", metadata=metadata)

    assert len(json.dumps(event.metadata).encode()) <= MAX_METADATA_BYTES
    assert event.metadata["_truncated"] is True
    assert event.metadata["k0"] == "v" * 100


async def test_session_is_passed_to_the_store(audit: AuditLogger, store: MemoryStore) -> None:
    session = object()
    await audit.log("x.y", session=session)  # type: ignore[arg-type]
    assert store.sessions == [session]


async def test_query_passes_filters_and_clamps(audit: AuditLogger, store: MemoryStore) -> None:
    after = datetime(2024, 1, 1, tzinfo=UTC)

    await audit.query("u1", "a", "doc", "d1", after, None, 5000, status="failure", offset=-1)

    assert store.queries == [
        {
            "actor_id": "u1",
            "action": "a",
            "resource_type": "doc",
            "resource_id": "d1",
            "status": "failure",
            "after": after,
            "before": None,
            "limit": 1000,
            "offset": 0,
        }
    ]


def test_event_to_dict_is_json_ready() -> None:
    event = AuditEvent(action="x.y", metadata={"a": 1})
    data = event.to_dict()

    assert set(data) == {
        "id",
        "timestamp",
        "action",
        "status",
        "actor_id",
        "actor_type",
        "resource_type",
        "resource_id",
        "request_id",
        "ip_address",
        "user_agent",
        "metadata",
    }
    assert json.loads(json.dumps(data))["metadata"] == {"a": 1}
    assert event.timestamp.tzinfo is UTC
