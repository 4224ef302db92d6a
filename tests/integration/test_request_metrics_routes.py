"""GET /metrics/requests...: admin-only, filtered, paginated; mounted next to /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from test_request_metrics_store import DATA

from _app_factory import SECRET
from _auth_helpers import add_user, bearer, collector_paused, login, running
from app_kernel import init_app_kernel
from app_kernel.db.engine import Database
from app_kernel.observability import RequestMetricsStore
from app_kernel.observability.request_metrics import RECORD_FIELDS, as_records
from app_kernel.observability.request_metrics_routes import request_metrics_router
from app_kernel.settings import (
    AuthSettings,
    KernelSettings,
    ObservabilitySettings,
    RequestMetricsSettings,
)
from app_kernel.web.problems import http_exception_handler, validation_exception_handler

__all__ = ("collector_paused",)

ADMIN = {"Authorization": "Bearer t", "X-Test-Admin": "1"}
BASE = "/metrics/requests"


async def fake_admin(
    authorization: Annotated[str | None, Header()] = None,
    x_test_admin: Annotated[str | None, Header()] = None,
) -> None:
    """401 without credentials, 403 unless X-Test-Admin is set."""
    if authorization is None:
        raise HTTPException(401, "Authentication required.", {"WWW-Authenticate": "Bearer"})
    if x_test_admin is None:
        raise HTTPException(403, "This action needs an admin.")


@pytest.fixture
def app() -> FastAPI:
    app = FastAPI()
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.include_router(request_metrics_router(BASE, fake_admin))
    return app


@pytest.fixture
async def http(app: FastAPI, sql_database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    database = Database(sql_database_url)
    await database.open()
    try:
        await RequestMetricsStore(database).insert_many(DATA)
        app.state.app_kernel = SimpleNamespace(database=database)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await database.close()


@pytest.mark.parametrize("suffix", ["", "/stats", "/slow", "/errors"])
async def test_every_route_is_admin_only(http: httpx.AsyncClient, suffix: str) -> None:
    anonymous = await http.get(BASE + suffix)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    user = await http.get(BASE + suffix, headers={"Authorization": "Bearer t"})
    assert user.status_code == 403
    admin = await http.get(BASE + suffix, headers=ADMIN)
    assert admin.status_code == 200
    assert admin.headers["cache-control"] == "no-store"


async def test_list_filters_and_pages(http: httpx.AsyncClient) -> None:
    first = (await http.get(BASE, headers=ADMIN, params={"limit": 3})).json()
    assert [r["path"] for r in first["items"]] == ["/api/c_1", "/api/b", "/api/b"]
    assert first["next_offset"] == 3
    last = (await http.get(BASE, headers=ADMIN, params={"limit": 3, "offset": 6})).json()
    assert [r["path"] for r in last["items"]] == ["/api/a/1", "/api/a/old"]
    assert last["next_offset"] is None
    filtered = await http.get(
        BASE, headers=ADMIN, params={"path_prefix": "/api/a", "min_latency_ms": 25}
    )
    assert [r["path"] for r in filtered.json()["items"]] == ["/api/a/4", "/api/a/3", "/api/a/old"]
    traced = await http.get(BASE, headers=ADMIN, params={"trace_id": DATA[3]["trace_id"]})
    assert [r["path"] for r in traced.json()["items"]] == ["/api/a/4"]
    assert (await http.get(BASE, headers=ADMIN, params={"limit": 0})).status_code == 422
    assert (await http.get(BASE, headers=ADMIN, params={"status_min": 700})).status_code == 422


@pytest.mark.parametrize("suffix", ["", "/slow", "/errors"])
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("offset", str(2**63)),  # past what the database takes
        ("route", "r" * 1025),
        ("trace_id", "not-a-trace-id"),
        ("since", "0001-01-01T00:00:00+05:00"),  # before year 1 in UTC
        ("until", "9999-12-31T23:00:00-05:00"),  # after year 9999 in UTC
    ],
)
async def test_values_the_database_cannot_take_are_422(
    http: httpx.AsyncClient, suffix: str, name: str, value: str
) -> None:
    response = await http.get(f"{BASE}{suffix}", headers=ADMIN, params={name: value})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [error["loc"] for error in response.json()["errors"]] == [["query", name]]


@pytest.mark.parametrize("name", ["path_prefix", "route", "method", "user_id", "workspace_id"])
async def test_text_filters_holding_nul_are_searched_not_refused(
    http: httpx.AsyncClient, name: str
) -> None:
    """PostgreSQL cannot hold NUL; the filter is searched as the store keeps it."""
    response = await http.get(BASE, headers=ADMIN, params={name: "/api\x00"})
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


async def test_slow_and_errors(http: httpx.AsyncClient) -> None:
    slow = (await http.get(f"{BASE}/slow", headers=ADMIN)).json()
    assert [r["latency_ms"] for r in slow["items"]] == [1500, 9999]
    slower = await http.get(f"{BASE}/slow", headers=ADMIN, params={"min_latency_ms": 150})
    assert [r["latency_ms"] for r in slower.json()["items"]] == [1500, 200, 9999]
    errors = (await http.get(f"{BASE}/errors", headers=ADMIN)).json()
    assert [r["status_code"] for r in errors["items"]] == [404, 500, 500]
    server = await http.get(f"{BASE}/errors", headers=ADMIN, params={"status_min": 500})
    assert [r["status_code"] for r in server.json()["items"]] == [500, 500]


async def test_stats(http: httpx.AsyncClient) -> None:
    stats = (await http.get(f"{BASE}/stats", headers=ADMIN)).json()
    assert stats["total_requests"] == 7
    assert stats["p50_latency_ms"] == pytest.approx(40)
    week = (await http.get(f"{BASE}/stats", headers=ADMIN, params={"hours": 72})).json()
    assert week["total_requests"] == 8
    assert (await http.get(f"{BASE}/stats", headers=ADMIN, params={"hours": 0})).status_code == 422


# --- mounted by the kernel -------------------------------------------------------------


@pytest.fixture
def kernel_app(tmp_path: Path) -> FastAPI:
    settings = KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        auth=AuthSettings(
            token_secret=SECRET, argon2_time_cost=1, argon2_memory_kib=8, revocation_cache_seconds=0
        ),
        observability=ObservabilitySettings(
            request_metrics=RequestMetricsSettings(enabled=True, flush_interval_seconds=3600)
        ),
    )
    app = FastAPI()
    init_app_kernel(app, settings, api_prefix="/api/v1")
    return app


async def test_the_kernel_mounts_the_routes_for_admins_next_to_prometheus(
    kernel_app: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=kernel_app)
    async with (
        running(kernel_app) as kernel,
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        await add_user(kernel, "root", role="admin")
        await add_user(kernel, "joe")
        admin = bearer((await login(http, "root"))["access_token"])
        user = bearer((await login(http, "joe"))["access_token"])
        await RequestMetricsStore(kernel.database).insert_many(DATA)

        assert (await http.get(BASE)).status_code == 401
        assert (await http.get(f"{BASE}/stats", headers=user)).status_code == 403
        listed = await http.get(BASE, headers=admin, params={"status_min": 500})
        assert listed.status_code == 200
        assert [r["path"] for r in listed.json()["items"]] == ["/api/b", "/api/b"]
        stats = await http.get(f"{BASE}/stats", headers=admin)
        assert stats.json()["total_requests"] == 7

        prometheus = await http.get("/metrics", headers=admin)
        assert prometheus.status_code == 200
        assert "http_requests_total" in prometheus.text
        # The metrics routes themselves are excluded from capture (below /metrics).
        rows = kernel.request_metrics.buffer.take(100)
        paths = [r["path"] for r in as_records(RECORD_FIELDS, rows)]
        assert not [p for p in paths if p.startswith("/metrics")]
        assert "/api/v1/auth/login" in paths


def test_the_spec_exclusions_are_the_default() -> None:
    assert RequestMetricsSettings().exclude_paths == (
        "/health",
        "/healthz",
        "/readyz",
        "/metrics",
        "/favicon.ico",
    )
    assert timedelta(days=RequestMetricsSettings().retention_days) == timedelta(days=30)
