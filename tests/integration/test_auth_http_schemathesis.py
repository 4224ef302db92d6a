"""Property-based fuzzing of the kernel's routes from the service's own OpenAPI.

The app mirrors ``examples/service.py`` (``create_service`` with a widget router)
but in debug mode, with self-signup, request metrics and the audit route on and
its files under ``tmp_path``, on each SQL database (PostgreSQL refuses text
that SQLite takes, such as NUL). Schemathesis generates valid and invalid
requests for every operation under ``/api/v1/auth``, ``/audit``,
``/metrics/requests`` plus ``/healthz`` and ``/readyz``; none may answer 5xx.
Requests carry an admin API key, so the admin-only routes are fuzzed past their
authorisation check. Bounded and derandomised, so a run takes seconds and
repeats exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import schemathesis
import yaml
from fastapi import APIRouter, Depends, FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation

from app_kernel import ServiceConfig, create_service
from app_kernel.auth import UserIdentity, get_current_user

ADMIN = "fuzz-admin"
ADMIN_PASSWORD = "fuzzing is a passphrase"
MAX_EXAMPLES = 30
OPERATIONS = r"^/api/v1/auth/|^/audit$|^/metrics/requests|^/healthz$|^/readyz$"
CurrentUser = Annotated[UserIdentity, Depends(get_current_user)]


def widget_router() -> APIRouter:
    """The example service's widget routes."""
    router = APIRouter(prefix="/widgets", tags=["widgets"])
    widgets: dict[str, dict[str, Any]] = {}

    @router.post("", status_code=201)
    async def create_widget(data: dict[str, Any], user: CurrentUser) -> dict[str, Any]:
        widget = {**data, "id": uuid.uuid4().hex, "owner": user.id}
        widgets[widget["id"]] = widget
        return widget

    @router.get("")
    async def list_widgets(user: CurrentUser) -> list[dict[str, Any]]:
        return [w for w in widgets.values() if w["owner"] == user.id]

    return router


@pytest.fixture
def service(tmp_path: Path, sql_database_url: str) -> Iterator[FastAPI]:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path),
                "database_url": sql_database_url,
                "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8},
                "features": {"enable_audit_routes": True},
                "observability": {
                    "access_log": False,
                    "log_level": "WARNING",
                    "request_metrics": {"enabled": True},
                },
            }
        )
    )
    app = create_service(
        "widget_service",
        routers=[widget_router()],
        config=ServiceConfig(debug=True, allow_self_signup=True),
        manifest=manifest,
        is_admin=lambda user: user["username"] == ADMIN,
    )
    yield app
    # Schemathesis started the app's lifespan in its own event loop thread; end it.
    asgi.shutdown_lifespans()


def admin_api_key(app: FastAPI) -> str:
    """Register the admin through the API, log in, and mint an admin API key."""
    with asgi.get_client(app) as http:
        prefix = "/api/v1/auth"
        body = {"username": ADMIN, "email": "fuzz@example.com", "password": ADMIN_PASSWORD}
        assert http.post(f"{prefix}/register", json=body).status_code == 201
        login = http.post(f"{prefix}/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
        token = login.json()["access_token"]
        created = http.post(
            f"{prefix}/api-keys",
            json={"name": "fuzz", "role": "admin"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201, created.text
        key: str = created.json()["key"]
        return key


@pytest.mark.timeout(120)
def test_auth_routes_never_answer_5xx(service: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", service).include(path_regex=OPERATIONS)
    key = admin_api_key(service)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {(op.method.upper(), op.path) for op in operations}
    assert {("POST", "/api/v1/auth/login"), ("POST", "/api/v1/auth/register")} <= paths
    assert ("GET", "/healthz") in paths
    assert {("GET", "/audit"), ("GET", "/metrics/requests/stats")} <= paths
    assert not any(path.startswith("/api/v1/widgets") for _, path in paths)

    for operation in operations:
        fuzz_operation(operation, {"X-API-Key": key})


def fuzz_operation(operation: APIOperation, headers: dict[str, str]) -> None:
    """Run valid and invalid requests for one operation; fail on any 5xx."""
    strategy = st.one_of(
        operation.as_strategy(generation_mode=mode, headers=headers)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    )

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    fuzz()
