"""The audit trail: who did what to which resource, when, and with what outcome.

:class:`AuditLogger` is what apps call (``await get_audit().log(...)``). It fills
the request id and client IP of the request being served, scrubs credentials
out of ``metadata`` and hands an :class:`AuditEvent` to an :class:`AuditStore`.
The kernel's store is :class:`SqlAuditStore`, the ``audit_events`` table of its
SQL database; passing ``session=`` writes the event in the caller's transaction,
so a change and its audit row are committed (or rolled back) together.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import JSON, Column, Index, String, Table, insert, select
from sqlalchemy.exc import SQLAlchemyError

from app_kernel._runtime import current_kernel
from app_kernel.db.tables import kernel_metadata
from app_kernel.db.types import UtcDateTime, storable_text
from app_kernel.errors import BackendUnavailable, KernelError
from app_kernel.observability.context import current_client_ip, current_request_id
from app_kernel.observability.redaction import REDACTED, is_secret_key, scrub_text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app_kernel.db.engine import Database

__all__ = (
    "MAX_ACTION_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_QUERY_LIMIT",
    "AuditEvent",
    "AuditLogger",
    "AuditStore",
    "SqlAuditStore",
    "audit_events_table",
    "get_audit",
)

MAX_ACTION_LENGTH = 128
"""Longest accepted ``action``; longer ones are a programming error (``ValueError``)."""
MAX_METADATA_BYTES = 16 * 1024
"""Largest serialised ``metadata``; bigger values are cut and marked ``_truncated``."""
MAX_QUERY_LIMIT = 1000
"""Most events one query returns."""

_MAX_ID_LENGTH = 255
_MAX_SHORT_LENGTH = 64
_MAX_USER_AGENT_LENGTH = 512
_MAX_METADATA_DEPTH = 8
_MAX_METADATA_KEY_LENGTH = 128
_TRUNCATED = "[truncated]"


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One recorded event.

    Attributes:
        action: what happened, such as ``user.login`` or ``authz_fail``.
        status: the outcome: ``success``, ``failure`` or any word the app uses.
        actor_id: who did it (a user id), when known.
        actor_type: what kind of actor: ``user``, ``apikey``, ``system``...
        resource_type: the kind of thing acted on (``document``).
        resource_id: which one.
        request_id: the id of the HTTP request that caused the event.
        ip_address: the client IP of that request.
        user_agent: the client's ``User-Agent``.
        metadata: further JSON-ready details, credentials already scrubbed.
        id: unique id (uuid4 hex).
        timestamp: when the event was logged, timezone-aware UTC.
    """

    action: str
    status: str = "success"
    actor_id: str | None = None
    actor_type: str = "user"
    resource_type: str | None = None
    resource_id: str | None = None
    request_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=_new_id)
    timestamp: datetime = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``timestamp`` as an ISO 8601 string with offset."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["timestamp"] = self.timestamp.isoformat()
        data["metadata"] = dict(self.metadata)
        return data


class AuditStore(Protocol):
    """**Protocol**: where audit events are kept."""

    async def write(self, event: AuditEvent, *, session: AsyncSession | None = None) -> None:
        """Store ``event``.

        Args:
            event: the event to store.
            session: a session on the kernel's database. When given, the event is
                written in its transaction and NOT committed: the caller commits
                (or rolls back) its own change and the event together.

        Raises:
            BackendUnavailable: the store failed.
        """
        ...

    async def query(
        self,
        *,
        actor_id: str | None = None,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        status: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEvent]:
        """Events matching every given filter, newest first.

        ``after`` and ``before`` are exclusive bounds on the timestamp; naive
        datetimes are taken as UTC.

        Raises:
            BackendUnavailable: the store failed.
        """
        ...


# --- SQL store -------------------------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    """A query bound without an offset means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


audit_events_table = Table(
    "audit_events",
    kernel_metadata,
    Column("id", String(32), primary_key=True),
    Column("timestamp", UtcDateTime(), nullable=False),
    Column("action", String(MAX_ACTION_LENGTH), nullable=False),
    Column("status", String(_MAX_SHORT_LENGTH), nullable=False),
    Column("actor_id", String(_MAX_ID_LENGTH)),
    Column("actor_type", String(_MAX_SHORT_LENGTH), nullable=False),
    Column("resource_type", String(_MAX_ID_LENGTH)),
    Column("resource_id", String(_MAX_ID_LENGTH)),
    Column("request_id", String(_MAX_ID_LENGTH)),
    Column("ip_address", String(_MAX_SHORT_LENGTH)),
    Column("user_agent", String(_MAX_USER_AGENT_LENGTH)),
    Column("metadata", JSON(), nullable=False),
    Index(None, "timestamp"),
    Index(None, "actor_id", "timestamp"),
    Index(None, "action", "timestamp"),
    Index(None, "resource_type", "resource_id"),
)
"""The ``audit_events`` table, created by ``Database.open()`` with the other kernel tables."""

_COLUMNS = tuple(f.name for f in dataclasses.fields(AuditEvent))


class SqlAuditStore:
    """:class:`AuditStore` on the kernel's SQL database (SQLite or PostgreSQL).

    Args:
        database: the kernel's database; its ``open()`` creates the table.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    async def write(self, event: AuditEvent, *, session: AsyncSession | None = None) -> None:
        """Insert ``event``; inside ``session``'s transaction, uncommitted, when given."""
        statement = insert(audit_events_table).values(
            {name: getattr(event, name) for name in _COLUMNS}
        )
        try:
            if session is not None:
                await session.execute(statement)
            else:
                async with self.database.engine.begin() as conn:
                    await conn.execute(statement)
        except SQLAlchemyError as exc:
            msg = f"audit store: could not write event {event.action!r}: {type(exc).__name__}"
            raise BackendUnavailable(msg) from exc

    async def query(
        self,
        *,
        actor_id: str | None = None,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        status: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEvent]:
        """Events matching every given filter, newest first (ties by id)."""
        table = audit_events_table
        statement = select(table)
        equal = {
            "actor_id": actor_id,
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "status": status,
        }
        for name, value in equal.items():
            if value is not None:
                # As the logger stored it, so text holding NUL finds its events.
                statement = statement.where(table.c[name] == storable_text(value))
        if after is not None:
            statement = statement.where(table.c.timestamp > _as_utc(after))
        if before is not None:
            statement = statement.where(table.c.timestamp < _as_utc(before))
        statement = (
            statement.order_by(table.c.timestamp.desc(), table.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        try:
            async with self.database.engine.connect() as conn:
                rows = (await conn.execute(statement)).mappings().all()
        except SQLAlchemyError as exc:
            msg = f"audit store: could not query events: {type(exc).__name__}"
            raise BackendUnavailable(msg) from exc
        return [AuditEvent(**{name: row[name] for name in _COLUMNS}) for row in rows]


# --- metadata scrubbing ----------------------------------------------------------------


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of ``value`` with credentials replaced by ``[redacted]``, and
    NUL and lone surrogates, which a database refuses, by U+FFFD."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return storable_text(scrub_text(value))
    if depth >= _MAX_METADATA_DEPTH:
        return _TRUNCATED
    if isinstance(value, Mapping):
        scrubbed: dict[str, Any] = {}
        for key, item in value.items():
            name = storable_text(str(key)[:_MAX_METADATA_KEY_LENGTH])
            scrubbed[name] = REDACTED if is_secret_key(name) else _json_safe(item, depth + 1)
        return scrubbed
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(item, depth + 1) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return _json_safe(value.value, depth + 1)
    return storable_text(scrub_text(str(value)))


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _bounded(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` if it fits :data:`MAX_METADATA_BYTES`, else its first keys that fit.

    Keys that do not fit keep their name with the value ``[truncated]`` while
    room remains; ``_truncated: true`` marks the cut.
    """
    if _size(metadata) <= MAX_METADATA_BYTES:
        return metadata
    kept: dict[str, Any] = {"_truncated": True}
    used = _size(kept)
    for key, value in metadata.items():
        # `, "key": value` costs what `{"key": value}` does: ", " instead of "{}".
        entry = _size({key: value})
        if used + entry <= MAX_METADATA_BYTES:
            kept[key] = value
            used += entry
            continue
        entry = _size({key: _TRUNCATED})
        if used + entry > MAX_METADATA_BYTES:
            break
        kept[key] = _TRUNCATED
        used += entry
    return kept


def _cut(value: str | None, length: int) -> str | None:
    return None if value is None else storable_text(str(value)[:length])


def _word(name: str, value: str, length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        msg = f"audit {name}: expected a non-empty string, got {value!r}"
        raise ValueError(msg)
    if len(value) > length:
        msg = f"audit {name}: at most {length} characters, got {len(value)}: {value[:40]!r}..."
        raise ValueError(msg)
    return value


# --- the logger ------------------------------------------------------------------------


class AuditLogger:
    """Audit logger for recording security events.

    Args:
        store: where events go; set later with :meth:`set_store` if None.
    """

    def __init__(self, store: AuditStore | None = None) -> None:
        self._store = store

    def set_store(self, store: AuditStore) -> None:
        """Set the audit store implementation."""
        self._store = store

    @property
    def store(self) -> AuditStore:
        """The store events go to.

        Raises:
            KernelError: no store was set.
        """
        if self._store is None:
            msg = (
                "the audit logger has no store: call audit.set_store(store), or "
                "init_app_kernel()/create_service() so get_audit() returns the kernel's "
                "logger on its SQL database"
            )
            raise KernelError(msg)
        return self._store

    async def log(
        self,
        action: str,
        status: str = "success",
        actor_id: str | None = None,
        actor_type: str = "user",
        resource_type: str | None = None,
        resource_id: str | None = None,
        request_id: str | None = None,
        ip_address: str | None = None,
        user_agent: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        session: AsyncSession | None = None,
    ) -> AuditEvent:
        """Log an audit event.

        ``request_id`` and ``ip_address`` default to those of the request being
        served. Values of ``metadata`` keys that look like credentials
        (password, token, secret, authorization, api key...) become
        ``[redacted]``, and metadata over 16 KB is cut. Over-long ids and user
        agents are cut to the column sizes.

        Args:
            action: what happened (``user.login``); 1 to 128 characters.
            status: the outcome; 1 to 64 characters.
            actor_id: who did it.
            actor_type: what kind of actor; 1 to 64 characters.
            resource_type: the kind of thing acted on.
            resource_id: which one.
            request_id: the HTTP request's id; the current request's if None.
            ip_address: the client IP; the current request's if None.
            user_agent: the client's ``User-Agent``.
            metadata: further details, made JSON-ready.
            session: a session on the kernel's database: the event joins its
                transaction and is committed with it (see :class:`AuditStore`).

        Returns:
            The stored event.

        Raises:
            ValueError: ``action``, ``status`` or ``actor_type`` is empty or too long.
            KernelError: no store was set.
            BackendUnavailable: the store failed.
        """
        store = self.store
        event = AuditEvent(
            action=_word("action", action, MAX_ACTION_LENGTH),
            status=_word("status", status, _MAX_SHORT_LENGTH),
            actor_id=_cut(actor_id, _MAX_ID_LENGTH),
            actor_type=_word("actor_type", actor_type, _MAX_SHORT_LENGTH),
            resource_type=_cut(resource_type, _MAX_ID_LENGTH),
            resource_id=_cut(resource_id, _MAX_ID_LENGTH),
            request_id=_cut(request_id or current_request_id(), _MAX_ID_LENGTH),
            ip_address=_cut(ip_address or current_client_ip(), _MAX_SHORT_LENGTH),
            user_agent=_cut(user_agent, _MAX_USER_AGENT_LENGTH),
            metadata=_bounded(_json_safe(dict(metadata or {}))),
        )
        await store.write(event, session=session)
        return event

    async def query(
        self,
        actor_id: str | None = None,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int = 100,
        *,
        status: str | None = None,
        offset: int = 0,
    ) -> list[AuditEvent]:
        """Query audit events, newest first.

        Args:
            actor_id: only this actor's events.
            action: only this action.
            resource_type: only this kind of resource.
            resource_id: only this resource.
            after: only events strictly after this time (naive means UTC).
            before: only events strictly before this time (naive means UTC).
            limit: at most this many events, clamped to 1..1000.
            status: only events with this outcome.
            offset: skip this many matching events first (negative means 0).

        Raises:
            KernelError: no store was set.
            BackendUnavailable: the store failed.
        """
        return await self.store.query(
            actor_id=actor_id,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            status=status,
            after=after,
            before=before,
            limit=min(max(int(limit), 1), MAX_QUERY_LIMIT),
            offset=max(int(offset), 0),
        )


def get_audit() -> AuditLogger:
    """The current kernel's audit logger.

    Raises:
        KernelNotInitialized: ``init_app_kernel()`` has not been called.
    """
    return current_kernel("get_audit()").audit
