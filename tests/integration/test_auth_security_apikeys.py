"""API keys over HTTP: admin-only management, exact matching, prompt revocation, apikey mode.

Checklist rows A1, A2, Z2 and H7.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from _auth_helpers import (
    ADMIN_ONLY,
    AUTH,
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
from app_kernel.auth.apikeys import api_keys_table
from app_kernel.auth.sql_store import users_table
from app_kernel.kernel import Kernel
from app_kernel.settings import FeatureSettings


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return auth_app(kernel_settings(tmp_path))


@pytest.fixture
async def kernel(app: FastAPI) -> AsyncIterator[Kernel]:
    async with running(app) as kernel:
        yield kernel


@pytest.fixture
async def http(app: FastAPI, kernel: Kernel) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as http:
        yield http


@pytest.fixture
async def admin(kernel: Kernel, http: httpx.AsyncClient) -> dict[str, Any]:
    """The admin's record, with its access token under ``token``."""
    record = await add_user(kernel, "root", role="admin")
    return {**record, "token": (await login(http, "root"))["access_token"]}


@pytest.fixture
async def alice(kernel: Kernel, http: httpx.AsyncClient) -> dict[str, Any]:
    record = await add_user(kernel, "alice")
    return {**record, "token": (await login(http, "alice"))["access_token"]}


async def create_key(http: httpx.AsyncClient, admin: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await http.post(
        f"{AUTH}/api-keys", json={"name": "ci", **body}, headers=bearer(admin["token"])
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created: dict[str, Any] = response.json()
    return created


async def test_key_works_in_either_header(
    http: httpx.AsyncClient, admin: dict[str, Any], alice: dict[str, Any]
) -> None:
    created = await create_key(http, admin, user_id=alice["id"])

    assert created["key"].startswith(f"ak_{created['key_id']}_")
    for headers in ({"X-API-Key": created["key"]}, bearer(created["key"])):
        response = await http.get(WHOAMI, headers=headers)
        assert response.status_code == 200
        assert (response.json()["id"], response.json()["auth_method"]) == (alice["id"], "apikey")
    assert_problem(await http.get(ADMIN_ONLY, headers={"X-API-Key": created["key"]}), 403)


async def test_admin_key_passes_admin_checks(
    http: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    created = await create_key(http, admin, role="admin")

    assert (await http.get(ADMIN_ONLY, headers={"X-API-Key": created["key"]})).status_code == 200


async def test_non_admins_cannot_manage_keys(
    http: httpx.AsyncClient, admin: dict[str, Any], alice: dict[str, Any]
) -> None:
    """Z2: 403 for a user; 401 without credentials."""
    created = await create_key(http, admin)
    as_alice = bearer(alice["token"])

    assert_problem(await http.post(f"{AUTH}/api-keys", json={"name": "x"}, headers=as_alice), 403)
    assert_problem(await http.get(f"{AUTH}/api-keys", headers=as_alice), 403)
    response = await http.delete(f"{AUTH}/api-keys/{created['key_id']}", headers=as_alice)
    assert_problem(response, 403)
    assert_unauthorized(await http.post(f"{AUTH}/api-keys", json={"name": "x"}), presented=False)
    # A key of a non-admin cannot mint keys either.
    user_key = await create_key(http, admin, user_id=alice["id"])
    response = await http.post(
        f"{AUTH}/api-keys", json={"name": "x"}, headers={"X-API-Key": user_key["key"]}
    )
    assert_problem(response, 403)
    assert (await http.get(WHOAMI, headers={"X-API-Key": created["key"]})).status_code == 200


async def test_altered_keys_are_refused(http: httpx.AsyncClient, admin: dict[str, Any]) -> None:
    """A1: truncated, extended, re-cased or re-prefixed keys, in either header."""
    key: str = (await create_key(http, admin))["key"]
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    variants = [
        key[:-1],
        key + "A",
        key[:20],
        flipped,
        key.upper(),
        "AK_" + key[3:],
        key.replace("_", "-", 1),
        f" {key}x",
        key + "\x00",
    ]

    for variant in variants:
        assert_unauthorized(await http.get(WHOAMI, headers={"X-API-Key": variant}))
        assert_unauthorized(await http.get(WHOAMI, headers=bearer(variant.strip() or "x")))
    assert (await http.get(WHOAMI, headers={"X-API-Key": key})).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"name": "   "},
        {"name": "k", "role": " "},
        {"name": "k", "user_id": " "},
        {"name": "k", "expires_at": "2999-01-01T00:00:00"},
        {"name": "k", "expires_at": "2000-01-01T00:00:00Z"},
        {"name": "k", "scopes": ["*"]},
    ],
    ids=["blank-name", "blank-role", "blank-user", "naive-expiry", "past-expiry", "extra"],
)
async def test_invalid_key_requests_are_422(
    http: httpx.AsyncClient, kernel: Kernel, admin: dict[str, Any], body: dict[str, Any]
) -> None:
    response = await http.post(f"{AUTH}/api-keys", json=body, headers=bearer(admin["token"]))

    assert_problem(response, 422)
    assert await kernel.auth.api_keys.list() == []


async def test_key_expiry_is_kept(http: httpx.AsyncClient, admin: dict[str, Any]) -> None:
    created = await create_key(http, admin, name=" deploy ", expires_at="2999-01-01T00:00:00+02:00")

    assert (created["name"], created["expires_at"]) == ("deploy", "2998-12-31T22:00:00+00:00")
    assert (await http.get(WHOAMI, headers={"X-API-Key": created["key"]})).status_code == 200


async def test_key_and_token_together_are_refused(
    http: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    """T14: two credentials, each valid alone, are ambiguous and refused."""
    key = (await create_key(http, admin))["key"]
    token = bearer(admin["token"])
    assert (await http.get(WHOAMI, headers=token)).status_code == 200

    assert_unauthorized(await http.get(WHOAMI, headers={**token, "X-API-Key": key}))
    both_keys = [(b"x-api-key", key.encode())] * 2
    assert_unauthorized(await http.get(WHOAMI, headers=both_keys))


async def test_key_in_the_query_string_is_ignored(
    http: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    key = (await create_key(http, admin))["key"]

    for name in ("api_key", "apikey", "x-api-key", "key"):
        assert_unauthorized(await http.get(WHOAMI, params={name: key}), presented=False)


async def test_key_of_a_deactivated_owner_is_forbidden(
    http: httpx.AsyncClient, kernel: Kernel, admin: dict[str, Any], alice: dict[str, Any]
) -> None:
    key = {"X-API-Key": (await create_key(http, admin, user_id=alice["id"]))["key"]}

    assert await kernel.auth.users.set_active(alice["id"], False)  # type: ignore[attr-defined]
    await kernel.auth.set_active(alice["id"], False)

    assert_problem(await http.get(WHOAMI, headers=key), 403)


async def test_key_of_a_deleted_owner_is_refused(
    http: httpx.AsyncClient, kernel: Kernel, admin: dict[str, Any], alice: dict[str, Any]
) -> None:
    """A1: once the owner is gone from the user store, the key stops working."""
    key = {"X-API-Key": (await create_key(http, admin, user_id=alice["id"]))["key"]}
    assert (await http.get(WHOAMI, headers=key)).status_code == 200

    async with kernel.database.sessions() as session, session.begin():
        await session.execute(users_table.delete().where(users_table.c.id == alice["id"]))
    await asyncio.sleep(kernel.settings.auth.revocation_cache_seconds)

    assert_unauthorized(await http.get(WHOAMI, headers=key))


async def test_key_for_an_unknown_user_is_404(
    http: httpx.AsyncClient, kernel: Kernel, admin: dict[str, Any]
) -> None:
    response = await http.post(
        f"{AUTH}/api-keys",
        json={"name": "ghost", "user_id": "0" * 32},
        headers=bearer(admin["token"]),
    )

    assert_problem(response, 404)
    assert await kernel.auth.api_keys.list() == []


class TestOnBothDatabases:
    """Key rows on SQLite and PostgreSQL."""

    @pytest.fixture
    def app(self, tmp_path: Path, sql_database_url: str) -> FastAPI:
        return auth_app(kernel_settings(tmp_path, database_url=sql_database_url))

    async def test_revoked_key_is_refused_at_the_next_request(
        self, http: httpx.AsyncClient, kernel: Kernel, admin: dict[str, Any]
    ) -> None:
        created = await create_key(http, admin)
        key = {"X-API-Key": created["key"]}
        assert (await http.get(WHOAMI, headers=key)).status_code == 200

        response = await http.delete(
            f"{AUTH}/api-keys/{created['key_id']}", headers=bearer(admin["token"])
        )

        assert response.status_code == 204
        assert_unauthorized(await http.get(WHOAMI, headers=key))
        assert_unauthorized(await http.get(WHOAMI, headers=bearer(created["key"])))
        again = await http.delete(
            f"{AUTH}/api-keys/{created['key_id']}", headers=bearer(admin["token"])
        )
        assert_problem(again, 404)
        actions = [e.action for e in await kernel.audit.query(resource_type="api_key")]
        assert actions == ["auth.api_key.revoked", "auth.api_key.created"]
        events = await kernel.audit.query(resource_id=created["key_id"])
        assert {e.actor_id for e in events} == {admin["id"]}

    async def test_only_a_hash_is_stored_and_listings_hold_no_secret(
        self, http: httpx.AsyncClient, kernel: Kernel, admin: dict[str, Any]
    ) -> None:
        """A2: neither the database nor the listing can give the key back."""
        created = await create_key(http, admin)
        secret = created["key"][len("ak_") + 12 + 1 :]  # the secret may hold "_" itself
        assert len(secret) == 43

        async with kernel.database.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys_table))).mappings().all()
        listing = await http.get(f"{AUTH}/api-keys", headers=bearer(admin["token"]))

        assert len(rows) == 1
        assert all(secret not in str(value) for value in rows[0].values())
        assert rows[0]["key_id"] == created["key_id"]
        assert listing.status_code == 200
        assert secret not in listing.text
        assert [item["prefix"] for item in listing.json()["items"]] == [f"ak_{created['key_id']}"]


class TestApiKeyMode:
    """``auth_mode="apikey"``: keys are the only credential; JWTs are refused."""

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        return auth_app(kernel_settings(tmp_path, features=FeatureSettings(auth_mode="apikey")))

    async def test_keys_accepted_tokens_refused(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        user = await add_user(kernel, "robot")
        key, _ = await kernel.auth.create_api_key(
            actor_id=user["id"], actor_type="system", user_id=user["id"], role="user", name="r"
        )
        token = kernel.auth.codec.encode_access(user)

        assert (await http.get(WHOAMI, headers={"X-API-Key": key})).status_code == 200
        assert (await http.get(WHOAMI, headers=bearer(key))).status_code == 200
        assert_unauthorized(await http.get(WHOAMI, headers=bearer(token)))
        login = await http.post(
            f"{AUTH}/login", json={"username": "robot", "password": "correct horse battery"}
        )
        assert_problem(login, 404)
