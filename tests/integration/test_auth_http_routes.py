"""The auth routes as a client sees them: shapes, headers, OpenAPI, wiring options,
audit rows and logs free of secrets.

Checklist rows L15, Z2, H7 and H9, plus the issue's wiring requirements.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import yaml
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import select

from _app_factory import SECRET
from _auth_helpers import (
    ADMIN_ONLY,
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
from app_kernel import ServiceConfig, create_service, init_app_kernel
from app_kernel.auth import UserIdentity, get_current_user
from app_kernel.auth.sql_store import users_table
from app_kernel.errors import BackendUnavailable
from app_kernel.kernel import Kernel
from app_kernel.observability.audit import audit_events_table
from app_kernel.observability.logging import configure_logging
from app_kernel.settings import FeatureSettings

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
    async with client(app, "192.0.2.10") as http:
        yield http


@pytest.fixture
async def alice(kernel: Kernel) -> dict[str, Any]:
    return await add_user(kernel, "alice")


class TestResponses:
    """L15 and the token response shape; OAuth2 form login."""

    async def test_login_answers_a_token_pair_that_must_not_be_cached(
        self, http: httpx.AsyncClient, alice: dict[str, Any]
    ) -> None:
        response = await http.post(
            f"{AUTH}/login", json={"username": "alice", "password": PASSWORD}
        )

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
        body = response.json()
        assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
        assert (body["token_type"], body["expires_in"]) == ("bearer", 15 * 60)
        refreshed = await http.post(
            f"{AUTH}/refresh", json={"refresh_token": body["refresh_token"]}
        )
        assert refreshed.status_code == 200
        assert refreshed.headers["cache-control"] == "no-store"
        assert set(refreshed.json()) == set(body)

    async def test_oauth2_password_form_logs_in(
        self, http: httpx.AsyncClient, alice: dict[str, Any]
    ) -> None:
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}

        response = await http.post(f"{AUTH}/login", data=form)

        assert response.status_code == 200
        me = await http.get(WHOAMI, headers=bearer(response.json()["access_token"]))
        assert me.json()["id"] == alice["id"]
        wrong = await http.post(f"{AUTH}/login", data={**form, "password": "nope"})
        assert_unauthorized(wrong, presented=False)
        assert_problem(await http.post(f"{AUTH}/login", data={"username": "alice"}), 422)
        huge = await http.post(f"{AUTH}/login", data={**form, "password": "p" * 20_000})
        assert_problem(huge, 413)

    async def test_me_describes_the_caller_without_secrets(
        self, http: httpx.AsyncClient, alice: dict[str, Any]
    ) -> None:
        pair = await login(http, "alice")

        response = await http.get(f"{AUTH}/me", headers=bearer(pair["access_token"]))

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert (body["id"], body["username"], body["email"]) == (
            alice["id"],
            "alice",
            "alice@example.com",
        )
        assert (body["role"], body["is_admin"], body["is_active"]) == ("user", False, True)
        assert "password_hash" not in body
        assert "argon2" not in response.text

    async def test_require_admin_is_403_for_a_user(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        """Z2."""
        await add_user(kernel, "root", role="admin")
        user = await login(http, "alice")
        admin = await login(http, "root")

        assert_problem(await http.get(ADMIN_ONLY, headers=bearer(user["access_token"])), 403)
        assert (
            await http.get(ADMIN_ONLY, headers=bearer(admin["access_token"]))
        ).status_code == 200


class TestIsAdminCallable:
    """``init_app_kernel(is_admin=...)`` decides who is an admin, overriding stored roles."""

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        return auth_app(kernel_settings(tmp_path), is_admin=lambda u: u["username"] == "boss")

    async def test_only_the_chosen_user_is_admin(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        await add_user(kernel, "boss")
        await add_user(kernel, "pretender", role="admin")
        boss = await login(http, "boss")
        pretender = await login(http, "pretender")

        assert (await http.get(ADMIN_ONLY, headers=bearer(boss["access_token"]))).status_code == 200
        me = await http.get(f"{AUTH}/me", headers=bearer(boss["access_token"]))
        assert (me.json()["role"], me.json()["is_admin"]) == ("admin", True)
        assert_problem(await http.get(ADMIN_ONLY, headers=bearer(pretender["access_token"])), 403)
        me = await http.get(f"{AUTH}/me", headers=bearer(pretender["access_token"]))
        assert (me.json()["role"], me.json()["is_admin"]) == ("user", False)
        refreshed = await http.post(
            f"{AUTH}/refresh", json={"refresh_token": boss["refresh_token"]}
        )
        token = refreshed.json()["access_token"]
        assert (await http.get(ADMIN_ONLY, headers=bearer(token))).status_code == 200


# --- create_service --------------------------------------------------------------------------


def _things_router() -> APIRouter:
    router = APIRouter(prefix="/things")

    @router.get("")
    async def things(user: Annotated[UserIdentity, Depends(get_current_user)]) -> dict[str, str]:
        return {"owner": user.id}

    return router


def _service(tmp_path: Path, **config: Any) -> FastAPI:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path),
                "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8},
            }
        )
    )
    return create_service(
        "svc",
        routers=[_things_router()],
        config=ServiceConfig(debug=True, jwt_secret=SECRET, **config),
        manifest=manifest,
    )


class TestCreateService:
    """Auth routes under ``/api/v1``; ``auth_enabled=False`` mounts none."""

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        return _service(tmp_path)

    async def test_login_is_mounted_under_the_api_prefix(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        user = await add_user(kernel, "alice")

        pair = await login(http, "alice")
        response = await http.get("/api/v1/things", headers=bearer(pair["access_token"]))

        assert response.json() == {"owner": user["id"]}
        assert_problem(await http.post("/auth/login", json={}), 404)

    def test_openapi_token_url_is_the_mounted_login_path(self, app: FastAPI) -> None:
        schema = app.openapi()

        flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
        assert flows["password"]["tokenUrl"] == "/api/v1/auth/login"
        assert "/api/v1/auth/login" in schema["paths"]
        assert "/api/v1/auth/register" not in schema["paths"]

    def test_openapi_token_url_follows_a_custom_prefix(self, tmp_path: Path) -> None:
        app = FastAPI()
        features = FeatureSettings(auth_prefix="/identity")
        init_app_kernel(app, kernel_settings(tmp_path, features=features))

        flows = app.openapi()["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
        assert flows["password"]["tokenUrl"] == "/identity/login"


class TestAuthDisabled:
    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        return _service(tmp_path, auth_enabled=False)

    async def test_no_auth_routes_and_protected_routes_answer_401(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        await add_user(kernel, "alice")

        for path in ("login", "refresh", "register", "me", "logout", "api-keys"):
            response = await http.post(f"/api/v1/auth/{path}", json={})
            assert_problem(response, 404)
        assert_unauthorized(await http.get("/api/v1/things"), presented=False)


# --- audit -----------------------------------------------------------------------------------


class TestAudit:
    """H7: login, logout and registration leave rows; a failure's row holds no password."""

    @pytest.fixture
    def app(self, tmp_path: Path, sql_database_url: str) -> FastAPI:
        settings = kernel_settings(tmp_path, features=SIGNUP, database_url=sql_database_url)
        return auth_app(settings)

    async def test_login_logout_and_registration_are_recorded(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        registered = await http.post(
            f"{AUTH}/register",
            json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
            headers={"User-Agent": "pytest-agent"},
        )
        user_id = registered.json()["id"]
        wrong = "wrong-password-never-stored"
        await http.post(f"{AUTH}/login", json={"username": "alice", "password": wrong})
        await http.post(f"{AUTH}/login", json={"username": "nobody", "password": wrong})
        pair = await login(http, "alice")
        await http.post(f"{AUTH}/logout", headers=bearer(pair["access_token"]))

        events = list(reversed(await kernel.audit.query()))

        summary = [(e.action, e.status, e.actor_id) for e in events]
        assert summary == [
            ("auth.register", "success", user_id),
            ("auth.login", "failure", user_id),
            ("auth.login", "failure", None),
            ("auth.login", "success", user_id),
            ("auth.logout", "success", user_id),
        ]
        assert {e.ip_address for e in events} == {"192.0.2.10"}
        assert all(e.request_id for e in events)
        assert events[1].metadata == {"username": "alice", "reason": "wrong_password"}
        assert events[2].metadata == {"username": "nobody", "reason": "unknown_user"}
        async with kernel.database.engine.connect() as conn:
            rows = (await conn.execute(select(audit_events_table))).all()
        dump = repr(rows)
        for secret in (PASSWORD, wrong, pair["access_token"], pair["refresh_token"]):
            assert secret not in dump

    async def test_registration_and_its_audit_row_commit_together(
        self, http: httpx.AsyncClient, kernel: Kernel, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def broken_write(*args: Any, **kwargs: Any) -> None:
            msg = "audit store: could not write event"
            raise BackendUnavailable(msg)

        body = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
        with monkeypatch.context() as patch:
            patch.setattr(kernel.audit.store, "write", broken_write)
            response = await http.post(f"{AUTH}/register", json=body)

        assert response.status_code >= 500
        assert response.headers["content-type"] == "application/problem+json"
        assert await kernel.auth.users.get_by_username("alice") is None
        async with kernel.database.engine.connect() as conn:
            assert (await conn.execute(select(users_table))).all() == []
        # Nothing half-written blocks the name: the same registration now succeeds.
        assert (await http.post(f"{AUTH}/register", json=body)).status_code == 201
        assert [e.action for e in await kernel.audit.query()] == ["auth.register"]


# --- logs ------------------------------------------------------------------------------------


async def test_no_secret_reaches_the_logs(
    app: FastAPI, kernel: Kernel, http: httpx.AsyncClient
) -> None:
    """Passwords, tokens and API keys never appear in any log line, at any level."""
    stream = io.StringIO()
    configure_logging(level="DEBUG", fmt="json", stream=stream)
    await add_user(kernel, "root", role="admin")
    wrong = "a-wrong-password-to-hide"
    fresh = "a-registration-password"

    await http.post(f"{AUTH}/login", json={"username": "root", "password": wrong})
    await http.post(f"{AUTH}/login", json={"username": "root"})
    await http.post(f"{AUTH}/login", data={"username": "root", "password": wrong + "-form"})
    pair = await login(http, "root")
    headers = bearer(pair["access_token"])
    await http.get(WHOAMI, headers=headers)
    created = await http.post(f"{AUTH}/api-keys", json={"name": "k"}, headers=headers)
    key = created.json()["key"]
    rotated = (
        await http.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
    ).json()
    await http.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})  # reuse
    await http.get(WHOAMI, headers={"X-API-Key": key})
    await http.get(WHOAMI, headers={"X-API-Key": key + "x"})
    await http.get(WHOAMI, headers={"Authorization": f"Bearer {pair['access_token']}x"})
    await http.post(
        f"{AUTH}/register",
        json={"username": "newbie", "email": "n@example.com", "password": fresh},
    )
    await http.post(
        f"{AUTH}/register",
        json={"username": "evil", "email": "e@example.com", "password": fresh, "role": "admin"},
    )

    text = stream.getvalue()
    assert "refresh token reused" in text
    assert text.count('"logger": "app_kernel.access"') >= 12
    secrets = [
        PASSWORD,
        wrong,
        fresh,
        pair["access_token"],
        pair["refresh_token"],
        rotated["access_token"],
        rotated["refresh_token"],
        key,
        key[len("ak_") + 12 + 1 :],
    ]
    leaked = [secret[:12] for secret in secrets if secret in text]
    assert leaked == []
    for token in (pair["access_token"], pair["refresh_token"], rotated["refresh_token"]):
        assert token.split(".")[2] not in text  # not even the signature
