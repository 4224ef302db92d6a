"""Refresh rotation, reuse detection, logout, revocation and deactivation over HTTP.

Run on both coordination backends (embedded SQLite and Redis), since token
families and revocation state live there. Checklist rows T15-T18, T20 and H7.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete

from _auth_helpers import (
    AUTH,
    WHOAMI,
    add_user,
    assert_problem,
    assert_unauthorized,
    auth_app,
    bearer,
    client,
    collector_paused,  # noqa: F401 - autouse fixture
    coordination_settings,
    login,
    running,
    token_parts,
)
from app_kernel.auth.sql_store import users_table
from app_kernel.kernel import Kernel


@pytest.fixture
def app(request: pytest.FixtureRequest, tmp_path: Path, coordination_url: str | None) -> FastAPI:
    return auth_app(coordination_settings(request, tmp_path, coordination_url))


@pytest.fixture
async def kernel(app: FastAPI) -> AsyncIterator[Kernel]:
    async with running(app) as kernel:
        yield kernel


@pytest.fixture
async def http(app: FastAPI, kernel: Kernel) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as http:
        yield http


@pytest.fixture
async def alice(kernel: Kernel) -> dict[str, Any]:
    return await add_user(kernel, "alice")


async def refresh(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post(f"{AUTH}/refresh", json={"refresh_token": token})


async def whoami(http: httpx.AsyncClient, pair: dict[str, Any]) -> httpx.Response:
    return await http.get(WHOAMI, headers=bearer(pair["access_token"]))


def family(pair: dict[str, Any]) -> str:
    fam: str = token_parts(pair["refresh_token"])[1]["fam"]
    return fam


async def test_refresh_rotates_the_pair(http: httpx.AsyncClient, alice: dict[str, Any]) -> None:
    first = await login(http, "alice")

    response = await refresh(http, first["refresh_token"])

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert family(second) == family(first)
    assert (await whoami(http, second)).json()["id"] == alice["id"]
    third = await refresh(http, second["refresh_token"])
    assert third.status_code == 200


async def test_reused_refresh_token_revokes_the_whole_family(
    http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
) -> None:
    """T15: the retired token, its successor and the family's access tokens all fail."""
    stolen = await login(http, "alice")
    rotated = (await refresh(http, stolen["refresh_token"])).json()
    other_login = await login(http, "alice")

    replay = await refresh(http, stolen["refresh_token"])

    assert_unauthorized(replay)
    assert_unauthorized(await refresh(http, rotated["refresh_token"]))
    assert_unauthorized(await whoami(http, rotated))
    assert_unauthorized(await whoami(http, stolen))
    # Only that family: the user's other login goes on.
    assert (await whoami(http, other_login)).status_code == 200
    events = await kernel.audit.query(action="auth.refresh_reuse")
    assert len(events) == 1
    assert (events[0].status, events[0].actor_id) == ("failure", alice["id"])
    assert events[0].resource_id == family(stolen)
    assert events[0].request_id == replay.headers["x-request-id"]


async def test_concurrent_refreshes_with_one_token_admit_exactly_one(
    http: httpx.AsyncClient, alice: dict[str, Any]
) -> None:
    """T16: the rotation is atomic; the loser is treated as reuse."""
    pair = await login(http, "alice")

    responses = await asyncio.gather(*(refresh(http, pair["refresh_token"]) for _ in range(2)))

    assert sorted(r.status_code for r in responses) == [200, 401]


async def test_logout_ends_the_login(http: httpx.AsyncClient, kernel: Kernel) -> None:
    user = await add_user(kernel, "alice")
    pair = await login(http, "alice")
    other = await login(http, "alice")

    response = await http.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))

    assert response.status_code == 204
    assert_unauthorized(await refresh(http, pair["refresh_token"]))
    assert_unauthorized(await whoami(http, pair))
    assert (await whoami(http, other)).status_code == 200
    assert (await refresh(http, other["refresh_token"])).status_code == 200
    events = await kernel.audit.query(action="auth.logout")
    assert [(e.actor_id, e.resource_id) for e in events] == [(user["id"], family(pair))]


async def test_logout_everywhere_ends_every_earlier_token(
    http: httpx.AsyncClient, alice: dict[str, Any]
) -> None:
    here = await login(http, "alice")
    there = await login(http, "alice")
    there = (await refresh(http, there["refresh_token"])).json()

    response = await http.post(
        f"{AUTH}/logout", json={"everywhere": True}, headers=bearer(here["access_token"])
    )

    assert response.status_code == 204
    for pair in (here, there):
        assert_unauthorized(await whoami(http, pair))
        assert_unauthorized(await refresh(http, pair["refresh_token"]))
    fresh = await login(http, "alice")
    assert (await whoami(http, fresh)).status_code == 200
    assert (await refresh(http, fresh["refresh_token"])).status_code == 200


async def test_logout_needs_a_valid_token(http: httpx.AsyncClient, alice: dict[str, Any]) -> None:
    pair = await login(http, "alice")

    assert_unauthorized(await http.post(f"{AUTH}/logout"), presented=False)
    assert_unauthorized(await http.post(f"{AUTH}/logout", headers=bearer(pair["refresh_token"])))
    assert (await whoami(http, pair)).status_code == 200


async def test_password_change_ends_earlier_tokens(
    http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
) -> None:
    """T17/T20: the CLI's password change revokes every token issued before it."""
    pair = await login(http, "alice")
    new_hash = await kernel.auth.hasher.hash_async("a brand new passphrase")
    await kernel.auth.users.set_password_hash(alice["id"], new_hash)  # type: ignore[attr-defined]

    await kernel.auth.revoke_all(alice["id"], reason="password_change", actor_type="system")

    assert_unauthorized(await whoami(http, pair))
    assert_unauthorized(await refresh(http, pair["refresh_token"]))
    old = await http.post(f"{AUTH}/login", json={"username": "alice", "password": "x" * 12})
    assert_unauthorized(old, presented=False)
    fresh = await login(http, "alice", "a brand new passphrase")
    assert (await whoami(http, fresh)).status_code == 200
    events = await kernel.audit.query(action="auth.tokens_revoked")
    assert [(e.resource_id, e.metadata) for e in events] == [
        (alice["id"], {"reason": "password_change"})
    ]


class TestDeactivation:
    """A deactivated user's valid token is 403 at its next request; login and refresh 401."""

    async def _deactivate(self, kernel: Kernel, user_id: str) -> None:
        assert await kernel.auth.users.set_active(user_id, False)  # type: ignore[attr-defined]
        await kernel.auth.set_active(user_id, False)

    async def test_valid_token_of_a_deactivated_user_is_forbidden(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        pair = await login(http, "alice")
        assert (await whoami(http, pair)).status_code == 200

        await self._deactivate(kernel, alice["id"])

        assert_problem(await whoami(http, pair), 403)
        assert_unauthorized(await refresh(http, pair["refresh_token"]))

    async def test_deactivated_user_cannot_log_in(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        await self._deactivate(kernel, alice["id"])

        response = await http.post(
            f"{AUTH}/login", json={"username": "alice", "password": "correct horse battery staple"}
        )

        assert_unauthorized(response, presented=False)

    async def test_reactivation_needs_a_new_login(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        pair = await login(http, "alice")
        await self._deactivate(kernel, alice["id"])

        assert await kernel.auth.users.set_active(alice["id"], True)  # type: ignore[attr-defined]
        await kernel.auth.set_active(alice["id"], True)

        assert_unauthorized(await whoami(http, pair))
        assert (await whoami(http, await login(http, "alice"))).status_code == 200


async def test_deleted_user_cannot_refresh(
    http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
) -> None:
    """T17/T20: a user removed from the store gets no new tokens."""
    pair = await login(http, "alice")
    async with kernel.database.sessions() as session, session.begin():
        await session.execute(delete(users_table).where(users_table.c.id == alice["id"]))

    assert_unauthorized(await refresh(http, pair["refresh_token"]))
    # Refusing the refresh revoked the family, so its access token stops too.
    assert_unauthorized(await whoami(http, pair))


async def test_a_family_ends_at_its_absolute_expiry(
    http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
) -> None:
    """T18: the family record's end is enforced by the backend, whatever the token says."""
    pair = await login(http, "alice")
    jti = token_parts(pair["refresh_token"])[1]["jti"]
    state = kernel.auth.state
    await state.start_family(family(pair), alice["id"], jti, await state.now() + 1.0)
    assert (await whoami(http, pair)).status_code == 200

    await asyncio.sleep(1.2)

    assert_unauthorized(await refresh(http, pair["refresh_token"]))
    assert_unauthorized(await whoami(http, pair))


class TestRevocationCache:
    """With the default 1 s cache, changes made by this process still apply at once."""

    @pytest.fixture
    def app(
        self, request: pytest.FixtureRequest, tmp_path: Path, coordination_url: str | None
    ) -> FastAPI:
        settings = coordination_settings(
            request, tmp_path, coordination_url, revocation_cache_seconds=1.0
        )
        return auth_app(settings)

    async def test_local_deactivation_and_logout_apply_at_once(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        pair = await login(http, "alice")
        other = await login(http, "alice")
        assert (await whoami(http, pair)).status_code == 200  # now cached
        assert (await whoami(http, other)).status_code == 200

        await http.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))
        assert_unauthorized(await whoami(http, pair))

        await kernel.auth.set_active(alice["id"], False)
        assert_problem(await whoami(http, other), 403)
