"""Text the auth routes store is refused with a 422 when it holds control characters,
on both SQL databases: PostgreSQL cannot store NUL at all, and SQLite would keep it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _auth_helpers import (
    AUTH,
    add_user,
    assert_problem,
    auth_app,
    bearer,
    client,
    collector_paused,
    kernel_settings,
    login,
    running,
)
from app_kernel.auth.store import InvalidEmail
from app_kernel.kernel import Kernel
from app_kernel.settings import FeatureSettings

__all__ = ("collector_paused",)


@pytest.fixture
async def served(
    tmp_path: Path, sql_database_url: str
) -> AsyncIterator[tuple[Kernel, httpx.AsyncClient, str]]:
    """The kernel, a client and an admin's access token, on each SQL database."""
    settings = kernel_settings(
        tmp_path,
        database_url=sql_database_url,
        features=FeatureSettings(allow_self_signup=True),
    )
    app = auth_app(settings)
    async with running(app) as kernel, client(app) as http:
        await add_user(kernel, "root", role="admin")
        yield kernel, http, (await login(http, "root"))["access_token"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "deploy\x00key"},
        {"name": "deploy\nkey"},
        {"name": "k", "role": "user\x00"},
        {"name": "k", "user_id": "u\x00"},
    ],
    ids=["nul-name", "newline-name", "nul-role", "nul-user-id"],
)
async def test_api_key_text_with_control_characters_is_422(
    served: tuple[Kernel, httpx.AsyncClient, str], body: dict[str, Any]
) -> None:
    kernel, http, token = served
    response = await http.post(f"{AUTH}/api-keys", json=body, headers=bearer(token))
    assert_problem(response, 422)
    assert await kernel.auth.api_keys.list() == []


@pytest.mark.parametrize(
    "email",
    [
        "a\x00@example.com",
        "a@exa\x00mple.com",
        "a@example.com\r",
        "pay\u200bpal@example.com",  # zero-width space: looks like another address
        "a@exa\u202emple.com",  # right-to-left override
    ],
)
async def test_signup_email_with_control_characters_is_422(
    served: tuple[Kernel, httpx.AsyncClient, str], email: str
) -> None:
    kernel, http, _ = served
    body = {"username": "newcomer", "email": email, "password": "long enough password 1"}
    assert_problem(await http.post(f"{AUTH}/register", json=body), 422)
    assert await kernel.auth.users.get_by_username("newcomer") is None


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "a b@example.com",
        "a@exa\x00mple.com",
        "a@" * 200,
        "a\udcff@example.com",  # a byte that was not UTF-8 in a command-line argument
        "pay\u200bpal@example.com",
    ],
)
async def test_create_user_refuses_a_malformed_email(
    served: tuple[Kernel, httpx.AsyncClient, str], email: str
) -> None:
    """The rule of the signup route holds for the CLI and app code too."""
    kernel, _, _ = served
    with pytest.raises(InvalidEmail, match="name@domain"):
        await add_user(kernel, "newcomer", email=email)
    assert await kernel.auth.users.get_by_username("newcomer") is None


@pytest.mark.parametrize(("email", "stored"), [("", ""), ("  ada@example.com ", "ada@example.com")])
async def test_create_user_keeps_no_email_and_trims_edges(
    served: tuple[Kernel, httpx.AsyncClient, str], email: str, stored: str
) -> None:
    """An empty email means none, as the user store has always kept it."""
    kernel, _, _ = served
    await add_user(kernel, "newcomer", email=email)
    record = await kernel.auth.users.get_by_username("newcomer")
    assert record is not None
    assert record["email"] == stored


async def test_listing_users_past_64_bits_is_empty_on_both_databases(
    served: tuple[Kernel, httpx.AsyncClient, str],
) -> None:
    """An offset past 64 bits raised OverflowError (SQLite) or a range error
    (PostgreSQL); the store bounds it as it bounds the limit."""
    kernel, _, _ = served
    store = kernel.auth.sql_users
    assert store is not None
    assert len(await store.list_users()) == 1
    assert await store.list_users(offset=2**64) == []
    assert await store.list_users(offset=10**9) == []
