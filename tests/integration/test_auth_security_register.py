"""Self-signup: off by default, no privilege fields, a password policy, one name per person.

Checklist rows L5, L6 and L11-L14; the flows that write users run on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from _auth_helpers import (
    AUTH,
    PASSWORD,
    WHOAMI,
    add_user,
    assert_problem,
    assert_unauthorized,
    auth_app,
    bearer,
    client,
    collector_paused,  # noqa: F401 - autouse fixture
    kernel_settings,
    login,
    running,
)
from app_kernel.kernel import Kernel
from app_kernel.settings import FeatureSettings

FULLWIDTH_ADMIN = "\uff21\uff24\uff2d\uff29\uff2e"
SIGNUP = FeatureSettings(allow_self_signup=True)


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return auth_app(kernel_settings(tmp_path, features=SIGNUP))


@pytest.fixture
async def kernel(app: FastAPI) -> AsyncIterator[Kernel]:
    async with running(app) as kernel:
        yield kernel


@pytest.fixture
async def http(app: FastAPI, kernel: Kernel) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as http:
        yield http


async def register(
    http: httpx.AsyncClient, username: str, password: str = PASSWORD, **extra: Any
) -> httpx.Response:
    body = {"username": username, "email": f"{abs(hash(username))}@example.com"}
    body |= {"password": password, **extra}
    return await http.post(f"{AUTH}/register", json=body)


async def user_count(kernel: Kernel) -> int:
    count: int = await kernel.auth.sql_users.count_users()  # type: ignore[union-attr]
    return count


class TestSignupOff:
    """L11: the register route does not exist unless self-signup is on."""

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        return auth_app(kernel_settings(tmp_path))

    async def test_register_is_404(self, http: httpx.AsyncClient, kernel: Kernel) -> None:
        response = await register(http, "mallory")

        assert_problem(response, 404)
        assert await user_count(kernel) == 0


class TestSignupOn:
    """Registration on SQLite and PostgreSQL."""

    @pytest.fixture
    def app(self, tmp_path: Path, sql_database_url: str) -> FastAPI:
        return auth_app(kernel_settings(tmp_path, features=SIGNUP, database_url=sql_database_url))

    async def test_new_user_can_log_in_as_a_plain_user(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        response = await register(http, "Newbie")

        assert response.status_code == 201
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"id", "username", "email", "role"}
        assert (body["username"], body["role"]) == ("Newbie", "user")
        pair = await login(http, "newbie")
        me = (await http.get(WHOAMI, headers=bearer(pair["access_token"]))).json()
        assert (me["id"], me["role"], me["is_admin"]) == (body["id"], "user", False)
        events = await kernel.audit.query(action="auth.register")
        assert [(e.actor_id, e.resource_id) for e in events] == [(body["id"], body["id"])]

    async def test_duplicates_and_equivalent_spellings_are_409(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        """L6, L14: NFKC and case folding make these one username."""
        assert (await register(http, "admin")).status_code == 201

        for username in ("admin", "Admin", FULLWIDTH_ADMIN, " admin ", "ADMIN"):
            assert_problem(await register(http, username), 409)
        assert await user_count(kernel) == 1

    async def test_duplicate_email_is_409(self, http: httpx.AsyncClient, kernel: Kernel) -> None:
        first = {"username": "one", "email": "Same@Example.com", "password": PASSWORD}
        second = {**first, "username": "two", "email": "same@example.com"}

        assert (await http.post(f"{AUTH}/register", json=first)).status_code == 201
        assert_problem(await http.post(f"{AUTH}/register", json=second), 409)
        assert await user_count(kernel) == 1

    @pytest.mark.parametrize(
        "extra",
        [{"role": "admin"}, {"is_admin": True}, {"id": "0" * 32}, {"is_active": True}],
        ids=["role", "is_admin", "id", "is_active"],
    )
    async def test_privilege_fields_are_refused(
        self, http: httpx.AsyncClient, kernel: Kernel, extra: dict[str, Any]
    ) -> None:
        """L12: mass assignment is a 422 and creates nobody."""
        response = await register(http, "mallory", **extra)

        body = assert_problem(response, 422)
        assert [error["loc"][-1] for error in body["errors"]] == list(extra)
        assert await kernel.auth.users.get_by_username("mallory") is None
        assert await user_count(kernel) == 0


class TestPasswordPolicy:
    """L13: length window and common passwords; no composition rules."""

    @pytest.mark.parametrize(
        "password",
        ["short77", "password123", "Password123", "P@ssw0rd", "qwertyuiop", "x" * 257],
        ids=["7-chars", "common", "common-cased", "common-leet", "keyboard", "257-chars"],
    )
    async def test_weak_password_is_422(
        self, http: httpx.AsyncClient, kernel: Kernel, password: str
    ) -> None:
        response = await register(http, "weakling", password)

        body = assert_problem(response, 422)
        assert password not in response.text
        assert "Password" in body["detail"]
        assert await user_count(kernel) == 0

    @pytest.mark.parametrize(
        "password",
        ["eight ch", "no digits or symbols here", "é" * 20, "Z" * 64, "y" * 256],
        ids=["8-chars", "no-digit", "non-ascii", "64-chars", "256-chars"],
    )
    async def test_acceptable_password_is_created(
        self, http: httpx.AsyncClient, password: str
    ) -> None:
        response = await register(http, "strong", password)

        assert response.status_code == 201
        await login(http, "strong", password)

    async def test_huge_password_is_refused_before_hashing(
        self, http: httpx.AsyncClient, kernel: Kernel, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """L4: a 100 KB password is refused without hashing it."""
        hashed: list[str] = []
        monkeypatch.setattr(kernel.auth.hasher, "hash_async", hashed.append)

        for password in ("h" * 100_000, "h" * 4097):
            assert_problem(await register(http, "hasher", password), 422)
        assert hashed == []


class TestUsernames:
    """L5, L6: invisible characters refused; injection-shaped names are plain text."""

    @pytest.mark.parametrize(
        "username",
        ["ad\u200dmin", "admin\u200b", "\u202eadmin", "admin\x00", "ad\nmin", "", "   ", "a" * 151],
        ids=["zwj", "zwsp", "rtl-override", "nul", "newline", "empty", "blank", "151-chars"],
    )
    async def test_invalid_username_is_422(
        self, http: httpx.AsyncClient, kernel: Kernel, username: str
    ) -> None:
        assert_problem(await register(http, username), 422)
        assert await user_count(kernel) == 0

    async def test_injection_shaped_usernames_are_distinct_literal_users(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        admin = await add_user(kernel, "admin", role="admin")
        names = ["admin' OR '1'='1", "admin'--", '{"$ne":null}', "admin%", "adm_n", "'; DROP--"]

        for name in names:
            response = await register(http, name, f"own password of {name}")
            assert response.status_code == 201, name
            assert response.json()["username"] == name

        for name in names:
            # The admin's password opens none of them, and each is its own user.
            assert_unauthorized(
                await http.post(f"{AUTH}/login", json={"username": name, "password": PASSWORD}),
                presented=False,
            )
            pair = await login(http, name, f"own password of {name}")
            me = (await http.get(WHOAMI, headers=bearer(pair["access_token"]))).json()
            assert me["id"] != admin["id"]
            assert me["role"] == "user"
        assert await user_count(kernel) == len(names) + 1
