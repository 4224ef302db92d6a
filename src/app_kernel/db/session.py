"""The ``get_db_session`` FastAPI dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from app_kernel._runtime import kernel_of_scope

__all__ = ("get_db_session",)


async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield an ``AsyncSession`` on the kernel's database for one request.

    The session is closed (and an uncommitted transaction rolled back) when the
    request ends; commit explicitly to keep changes.
    """
    async with kernel_of_scope(request.scope).database.sessions() as session:
        yield session
