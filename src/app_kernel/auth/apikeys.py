"""API keys: long-lived machine credentials, stored as a SHA-256 hash.

A key reads ``ak_<key_id>_<secret>``. ``key_id`` is 12 lowercase hex characters:
the visible prefix, shown in listings and used to find the row. ``secret`` is
``secrets.token_urlsafe(32)`` (256 bits). Only ``sha256(secret)`` is stored; the
plaintext is returned once, by :meth:`ApiKeyStore.create`. A fast hash is right
here because the secret is random and long, not a password (ASVS 6.5.2).

Lookups are cached per ``key_id`` for at most ``cache_seconds``, positive and
negative alike, so a revocation made by another process takes effect within
that bound. A revocation made through the same store takes effect at once.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import structlog
from sqlalchemy import (
    Column,
    CursorResult,
    Index,
    String,
    Table,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from app_kernel.auth.models import UserIdentity
from app_kernel.db.tables import kernel_metadata
from app_kernel.db.types import UtcDateTime

if TYPE_CHECKING:
    from sqlalchemy.engine import Row, RowMapping
    from sqlalchemy.ext.asyncio import AsyncSession

    from app_kernel.db.engine import Database

__all__ = (
    "API_KEY_LENGTH",
    "API_KEY_PREFIX",
    "ApiKeyRecord",
    "ApiKeyStore",
    "api_keys_table",
    "parse_api_key",
)

API_KEY_PREFIX = "ak_"
"""Every API key starts with this, so scanners and people can recognise one."""
API_KEY_LENGTH = 59
"""Length of every API key: ``ak_`` + 12 hex + ``_`` + 43 base64url characters."""

_KEY_PATTERN = re.compile(r"ak_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
# Compared against when the key_id is unknown, so every miss does the same work.
_DUMMY_HASH = "0" * 64
# Bounds the per-process caches: a caller spraying random key ids cannot grow them.
_MAX_CACHE_ENTRIES = 10_000

_T = TypeVar("_T")

_log = structlog.stdlib.get_logger("app_kernel.auth")


api_keys_table = Table(
    "api_keys",
    kernel_metadata,
    Column("key_id", String(12), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("role", String(64), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_used_at", UtcDateTime(), nullable=True),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("expires_at", UtcDateTime(), nullable=True),
    Index(None, "user_id"),
)
"""The ``api_keys`` table, created by :meth:`Database.open` once this module is imported."""


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as stored, without its secret or the secret's hash.

    Attributes:
        key_id: 12 lowercase hex characters; the visible part of the key.
        name: what the owner called the key.
        user_id: the user the key acts as.
        role: the role the key grants.
        created_at: when the key was created (UTC).
        last_used_at: when a request last used the key, to within the store's
            ``touch_interval_seconds``; None if never used.
        revoked_at: when the key was revoked; None while it is not.
        expires_at: when the key stops working; None for never.
    """

    key_id: str
    name: str
    user_id: str
    role: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    expires_at: datetime | None = None

    @property
    def prefix(self) -> str:
        """``ak_<key_id>``: safe to show, enough to recognise the key."""
        return f"{API_KEY_PREFIX}{self.key_id}"

    def is_active(self, at: datetime | None = None) -> bool:
        """True when the key is neither revoked nor expired at ``at`` (default: now)."""
        if self.revoked_at is not None:
            return False
        if self.expires_at is None:
            return True
        return self.expires_at > (at or datetime.now(UTC))

    def to_identity(self) -> UserIdentity:
        """The caller's identity for a request authenticated with this key.

        Only ``id``, ``role`` and ``auth_method`` are known; look the user up to
        fill in the rest or to refuse a deactivated owner.
        """
        return UserIdentity(id=self.user_id, role=self.role, auth_method="apikey")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; datetimes as ISO 8601 strings, None when unset."""
        return {
            "key_id": self.key_id,
            "prefix": self.prefix,
            "name": self.name,
            "user_id": self.user_id,
            "role": self.role,
            "created_at": self.created_at.isoformat(),
            "last_used_at": _iso(self.last_used_at),
            "revoked_at": _iso(self.revoked_at),
            "expires_at": _iso(self.expires_at),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def parse_api_key(text: str) -> tuple[str, str] | None:
    """Split an API key into ``(key_id, secret)``; None unless it is well formed.

    The length is checked before anything else, so a huge input costs nothing.
    Truncated, extended or otherwise altered keys give None.
    """
    if not isinstance(text, str) or len(text) != API_KEY_LENGTH:
        return None
    match = _KEY_PATTERN.fullmatch(text)
    if match is None:
        return None
    return match.group(1), match.group(2)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _record_from_row(row: RowMapping) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        name=row["name"],
        user_id=row["user_id"],
        role=row["role"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
    )


def _check_text(field: str, value: str, max_length: int) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        msg = f"{field}: expected a non-blank string of at most {max_length} characters"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class _Stored:
    record: ApiKeyRecord
    secret_hash: str


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    fresh_until: float
    stored: _Stored | None


def _make_room(cache: dict[str, _T], still_valid: Callable[[_T], bool]) -> None:
    """Make room in ``cache``: drop entries no longer valid, then the oldest ones."""
    if len(cache) < _MAX_CACHE_ENTRIES:
        return
    for key in [k for k, v in cache.items() if not still_valid(v)]:
        del cache[key]
    while len(cache) >= _MAX_CACHE_ENTRIES:
        del cache[next(iter(cache))]


class ApiKeyStore:
    """Create, verify, list and revoke API keys in the kernel's SQL database.

    Attributes:
        database: the database the keys live in; callers open sessions on it to
            create or revoke a key in their own transaction.

    Args:
        database: the kernel's database; import this module before
            :meth:`Database.open` so the ``api_keys`` table is created.
        cache_seconds: how long a lookup (found or not) is reused in this
            process. A revocation by another process takes effect within it.
            0 disables the cache.
        touch_interval_seconds: ``last_used_at`` is written at most once per
            key per interval, so a busy key does not cost a write per request.
    """

    def __init__(
        self,
        database: Database,
        *,
        cache_seconds: float = 1.0,
        touch_interval_seconds: float = 60.0,
    ) -> None:
        if cache_seconds < 0 or touch_interval_seconds < 0:
            msg = (
                "cache_seconds and touch_interval_seconds: expected 0 or more, got "
                f"{cache_seconds!r} and {touch_interval_seconds!r}"
            )
            raise ValueError(msg)
        self.database = database
        self._cache_seconds = cache_seconds
        self._touch_interval = touch_interval_seconds
        self._cache: dict[str, _CacheEntry] = {}
        self._loading: dict[str, asyncio.Future[_Stored | None]] = {}
        self._touched: dict[str, float] = {}

    async def create(
        self,
        *,
        user_id: str,
        role: str,
        name: str,
        expires_at: datetime | None = None,
        session: AsyncSession | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """Create a key and return ``(plaintext, record)``.

        The plaintext is returned only here; it cannot be recovered later.

        Args:
            user_id: the user the key acts as.
            role: the role the key grants.
            name: a label for people, such as ``"ci deploy"``.
            expires_at: when the key stops working (timezone-aware); None for never.
            session: add the row to this session without committing, so the
                caller can write an audit row in the same transaction. Without
                it the key is committed before this returns.

        Raises:
            ValueError: a blank or overlong field, or a naive ``expires_at``.
        """
        _check_text("user_id", user_id, 255)
        _check_text("role", role, 64)
        _check_text("name", name, 200)
        if expires_at is not None and expires_at.tzinfo is None:
            msg = f"expires_at: expected a timezone-aware datetime, got {expires_at!r}"
            raise ValueError(msg)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            key_id=key_id,
            name=name,
            user_id=user_id,
            role=role,
            created_at=datetime.now(UTC),
            expires_at=None if expires_at is None else expires_at.astimezone(UTC),
        )
        statement = insert(api_keys_table).values(
            key_id=record.key_id,
            name=record.name,
            user_id=record.user_id,
            role=record.role,
            secret_hash=_hash_secret(secret),
            created_at=record.created_at,
            expires_at=record.expires_at,
        )
        if session is not None:
            await session.execute(statement)
        else:
            async with self.database.engine.begin() as conn:
                await conn.execute(statement)
        return f"{API_KEY_PREFIX}{key_id}_{secret}", record

    async def verify(self, plaintext: str) -> ApiKeyRecord | None:
        """The record of a usable key, or None.

        None for a malformed, unknown, revoked or expired key, or a wrong
        secret. Records ``last_used_at`` (one UPDATE at most per key per touch
        interval; a failure to record it is logged, not raised).
        """
        parsed = parse_api_key(plaintext)
        if parsed is None:
            return None
        key_id, secret = parsed
        stored = await self._lookup(key_id)
        expected = _DUMMY_HASH if stored is None else stored.secret_hash
        if not hmac.compare_digest(_hash_secret(secret), expected) or stored is None:
            return None
        now = datetime.now(UTC)
        record = stored.record
        if not record.is_active(now):
            return None
        if self._should_touch(record, now):
            record = replace(record, last_used_at=now)
            await self._touch(key_id, now)
        return record

    async def revoke(self, key_id: str, *, session: AsyncSession | None = None) -> bool:
        """Revoke a key; False if it is unknown or already revoked.

        Takes effect at once in this process and within ``cache_seconds`` in
        others. With ``session`` the change joins the caller's transaction and
        is not committed here.
        """
        if not _KEY_ID_PATTERN.fullmatch(key_id):
            return False
        statement = (
            update(api_keys_table)
            .where(api_keys_table.c.key_id == key_id, api_keys_table.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        self._forget(key_id)
        if session is not None:
            result = await session.execute(statement)
        else:
            async with self.database.engine.begin() as conn:
                result = await conn.execute(statement)
        self._forget(key_id)
        return cast("CursorResult[Any]", result).rowcount == 1

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """A key's record, revoked or not; None if unknown. Never cached."""
        if not _KEY_ID_PATTERN.fullmatch(key_id):
            return None
        stored = await self._load(key_id)
        return None if stored is None else stored.record

    async def list(
        self, user_id: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKeyRecord]:
        """Keys, oldest first: all users' or one user's, revoked ones only if asked.

        Expired keys are included; see :meth:`ApiKeyRecord.is_active`.
        """
        table = api_keys_table
        statement = select(*[c for c in table.c if c.name != "secret_hash"])
        if user_id is not None:
            statement = statement.where(table.c.user_id == user_id)
        if not include_revoked:
            statement = statement.where(table.c.revoked_at.is_(None))
        statement = statement.order_by(table.c.created_at, table.c.key_id)
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_record_from_row(row) for row in rows]

    # --- internals ------------------------------------------------------------------

    async def _load(self, key_id: str) -> _Stored | None:
        statement = select(api_keys_table).where(api_keys_table.c.key_id == key_id)
        async with self.database.engine.connect() as conn:
            row: Row[Any] | None = (await conn.execute(statement)).first()
        if row is None:
            return None
        mapping = row._mapping
        return _Stored(record=_record_from_row(mapping), secret_hash=mapping["secret_hash"])

    async def _lookup(self, key_id: str) -> _Stored | None:
        """The stored key, from the cache when fresh; concurrent misses share one SELECT."""
        if self._cache_seconds <= 0:
            return await self._load(key_id)
        entry = self._cache.get(key_id)
        if entry is not None and entry.fresh_until > time.monotonic():
            return entry.stored
        loading = self._loading.get(key_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_into_cache(key_id))
            self._loading[key_id] = loading
            loading.add_done_callback(lambda done: self._loaded(key_id, done))
        return await asyncio.shield(loading)

    async def _load_into_cache(self, key_id: str) -> _Stored | None:
        # Freshness counts from before the SELECT, so the bound holds for what it read.
        started = time.monotonic()
        stored = await self._load(key_id)
        # Not cached if a revocation in this process dropped this load meanwhile.
        if self._loading.get(key_id) is asyncio.current_task():
            self._cache.pop(key_id, None)
            now = time.monotonic()
            _make_room(self._cache, lambda e: e.fresh_until > now)
            self._cache[key_id] = _CacheEntry(started + self._cache_seconds, stored)
        return stored

    def _loaded(self, key_id: str, done: asyncio.Future[_Stored | None]) -> None:
        if self._loading.get(key_id) is done:
            del self._loading[key_id]
        if not done.cancelled():
            done.exception()  # retrieved here so an unawaited failure is not reported twice

    def _forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
        # A SELECT already running may have read the row before the revocation.
        self._loading.pop(key_id, None)

    def _should_touch(self, record: ApiKeyRecord, now: datetime) -> bool:
        interval = self._touch_interval
        if (
            record.last_used_at is not None
            and (now - record.last_used_at).total_seconds() < interval
        ):
            return False
        key_id = record.key_id
        mono = time.monotonic()
        last = self._touched.get(key_id)
        if last is not None and mono - last < interval:
            return False
        # Claimed before the UPDATE is awaited, so concurrent requests do not repeat it.
        self._touched.pop(key_id, None)
        _make_room(self._touched, lambda t: mono - t < interval)
        self._touched[key_id] = mono
        return True

    async def _touch(self, key_id: str, now: datetime) -> None:
        table = api_keys_table
        statement = (
            update(table)
            .where(
                table.c.key_id == key_id,
                or_(
                    table.c.last_used_at.is_(None),
                    table.c.last_used_at < now - timedelta(seconds=self._touch_interval),
                ),
            )
            .values(last_used_at=now)
        )
        try:
            async with self.database.engine.begin() as conn:
                await conn.execute(statement)
        except SQLAlchemyError as exc:
            _log.warning("api_key_touch_failed", key_id=key_id, error=type(exc).__name__)
            return
        entry = self._cache.get(key_id)
        if entry is not None and entry.stored is not None:
            stored = replace(entry.stored, record=replace(entry.stored.record, last_used_at=now))
            self._cache[key_id] = replace(entry, stored=stored)
