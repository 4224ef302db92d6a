"""The audit trail wired by the kernel: get_audit(), the /audit route and auth events."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from _auth_helpers import (
    AUTH,
    PASSWORD,
    add_user,
    assert_problem,
    auth_app,
    bearer,
    client,
    kernel_settings,
    login,
    running,
)
from app_kernel.observability.audit import get_audit
from app_kernel.settings import FeatureSettings


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    features = FeatureSettings(enable_audit_routes=True)
    return auth_app(kernel_settings(tmp_path, features=features))


async def test_get_audit_is_the_running_kernels_logger(app: FastAPI) -> None:
    async with running(app) as kernel:
        assert get_audit() is kernel.audit
        event = await get_audit().log("app.thing", actor_id="u1")
        assert [e.id for e in await kernel.audit.query(action="app.thing")] == [event.id]


async def test_audit_route_is_admin_only(app: FastAPI) -> None:
    async with running(app) as kernel, client(app) as http:
        await add_user(kernel, "root", role="admin")
        await add_user(kernel, "alice")
        admin = await login(http, "root")
        user = await login(http, "alice")

        assert_problem(await http.get("/audit"), 401)
        assert_problem(await http.get("/audit", headers=bearer(user["access_token"])), 403)
        response = await http.get("/audit", headers=bearer(admin["access_token"]))

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert {"items", "limit", "offset", "next_offset"} <= response.json().keys()


async def test_logins_are_audited_with_request_context_and_no_password(app: FastAPI) -> None:
    """H7: UTC events carrying the request id and client IP, never the password."""
    async with running(app) as kernel, client(app, ip="203.0.113.9") as http:
        await add_user(kernel, "root", role="admin")
        failed = await http.post(
            f"{AUTH}/login", json={"username": "root", "password": "wrong password!!"}
        )
        admin = await login(http, "root")
        response = await http.get(
            "/audit", params={"action": "auth.login"}, headers=bearer(admin["access_token"])
        )

    assert failed.status_code == 401
    items = response.json()["items"]
    assert [(i["action"], i["status"]) for i in items] == [
        ("auth.login", "success"),
        ("auth.login", "failure"),
    ]
    failure = items[1]
    assert failure["request_id"] == failed.headers["x-request-id"]
    assert failure["ip_address"] == "203.0.113.9"
    assert failure["timestamp"].endswith("+00:00")
    assert PASSWORD not in response.text
    assert "wrong password" not in response.text


@pytest.fixture
def default_app(tmp_path: Path) -> FastAPI:
    return auth_app(kernel_settings(tmp_path))


async def test_audit_route_is_off_by_default(default_app: FastAPI) -> None:
    async with running(default_app), client(default_app) as http:
        assert (await http.get("/audit")).status_code == 404
