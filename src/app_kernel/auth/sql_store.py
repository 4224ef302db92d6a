"""The kernel's own user store, on its SQL database (SQLite or PostgreSQL)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Boolean, Column, String, Table, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app_kernel.auth.store import InvalidUsername, UserRecord, normalise_username
from app_kernel.db.engine import Database
from app_kernel.db.tables import kernel_metadata
from app_kernel.db.types import UtcDateTime, utcnow
from app_kernel.observability.query_params import MAX_OFFSET

__all__ = ("SqlUserStore", "users_table")

users_table = Table(
    "kernel_users",
    kernel_metadata,
    Column("id", String(32), primary_key=True),
    Column("username", String(150), nullable=False),
    Column("username_key", String(150), nullable=False, unique=True),
    Column("email", String(320), nullable=False, default=""),
    Column("email_key", String(320), nullable=True, unique=True),
    Column("password_hash", String(512), nullable=False),
    Column("role", String(64), nullable=False, default="user"),
    Column("is_active", Boolean, nullable=False, default=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

_FIELDS = (
    users_table.c.id,
    users_table.c.username,
    users_table.c.email,
    users_table.c.password_hash,
    users_table.c.role,
    users_table.c.is_active,
    users_table.c.created_at,
)


def _record(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


class SqlUserStore:
    """Users in the ``kernel_users`` table; implements ``UserStore`` and ``UserAdminStore``.

    Usernames are unique after :func:`normalise_username`; emails are unique
    case-insensitively when given.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    async def get_by_username(self, username: str) -> UserRecord | None:
        try:
            key = normalise_username(username)
        except InvalidUsername:
            return None
        async with self.database.sessions() as session:
            row = (
                await session.execute(select(*_FIELDS).where(users_table.c.username_key == key))
            ).first()
        return _record(row) if row is not None else None

    async def get_by_id(self, user_id: str) -> UserRecord | None:
        if not isinstance(user_id, str) or len(user_id) > 64:
            return None
        async with self.database.sessions() as session:
            row = (
                await session.execute(select(*_FIELDS).where(users_table.c.id == user_id))
            ).first()
        return _record(row) if row is not None else None

    async def create(
        self,
        username: str,
        email: str,
        password_hash: str,
        *,
        role: str = "user",
        session: AsyncSession | None = None,
    ) -> UserRecord:
        """Create a user. With ``session`` the row joins that transaction uncommitted.

        A taken name fails the caller's transaction, which must then be rolled
        back (the ``ValueError`` propagating out of ``session.begin()`` does that).

        Raises:
            ValueError: the username or email is taken, or the username is invalid.
        """
        key = normalise_username(username)
        now = utcnow()
        email = (email or "").strip()
        values = {
            "id": uuid.uuid4().hex,
            "username": username.strip(),
            "username_key": key,
            "email": email,
            "email_key": email.casefold() or None,
            "password_hash": password_hash,
            "role": role,
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }
        if session is not None:
            await self._insert(session, values)
        else:
            async with self.database.sessions() as own, own.begin():
                await self._insert(own, values)
        return {k: values[k] for k in ("id", "username", "email", "password_hash", "role")} | {
            "is_active": True,
            "created_at": now,
        }

    @staticmethod
    async def _insert(session: AsyncSession, values: dict[str, Any]) -> None:
        # No SAVEPOINT: the SQLite driver opens its transaction lazily, so a SAVEPOINT
        # issued first becomes the outermost transaction and its RELEASE commits the
        # row, before the audit row of the same transaction is even written.
        try:
            await session.execute(users_table.insert().values(**values))
        except IntegrityError:
            msg = "a user with this username or email already exists"
            raise ValueError(msg) from None

    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[UserRecord]:
        query = (
            select(*_FIELDS)
            .order_by(users_table.c.created_at, users_table.c.id)
            .limit(max(1, min(limit, 1000)))
            .offset(max(0, min(offset, MAX_OFFSET)))  # past 64 bits the driver raises
        )
        async with self.database.sessions() as session:
            rows = (await session.execute(query)).all()
        return [_record(row) for row in rows]

    async def count_users(self) -> int:
        async with self.database.sessions() as session:
            return int(
                (await session.execute(select(func.count()).select_from(users_table))).scalar_one()
            )

    async def _update(self, user_id: str, **values: Any) -> bool:
        async with self.database.sessions() as session, session.begin():
            result = await session.execute(
                update(users_table)
                .where(users_table.c.id == user_id)
                .values(**values, updated_at=utcnow())
            )
        return bool(getattr(result, "rowcount", 0))

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        return await self._update(user_id, password_hash=password_hash)

    async def set_active(self, user_id: str, active: bool) -> bool:
        return await self._update(user_id, is_active=active)

    async def set_role(self, user_id: str, role: str) -> bool:
        return await self._update(user_id, role=role)
