"""Apps mounted on a kernel app (``app.mount``): the kernel still serves their requests.

Below a mount, ``scope["app"]`` is the mounted app and ``root_path`` holds the
mount's raw path. The kernel's dependencies must still find the kernel, and
metrics, request records and access lines must name the route by its
templates, mount included (``/t/{tenant}/items/{item_id}``), never by the raw
tenant.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from _app_factory import access_lines, serve
from _auth_helpers import API_PREFIX, add_user, bearer, collector_paused, login
from app_kernel import init_app_kernel
from app_kernel.auth import UserIdentity, get_current_user
from app_kernel.db import get_db_session
from app_kernel.observability.logging import configure_logging
from app_kernel.observability.request_metrics import RECORD_FIELDS, as_records
from app_kernel.reliability import rate_limit
from app_kernel.settings import (
    AuthSettings,
    FeatureSettings,
    KernelSettings,
    ObservabilitySettings,
    RequestMetricsSettings,
)

__all__ = ("collector_paused",)

SECRET = "mounted-apps-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def _settings(tmp_path: Path) -> KernelSettings:
    return KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        auth=AuthSettings(token_secret=SECRET, argon2_time_cost=1, argon2_memory_kib=8),
        features=FeatureSettings(protect_metrics="none"),
        observability=ObservabilitySettings(
            request_metrics=RequestMetricsSettings(enabled=True, flush_interval_seconds=3600.0)
        ),
    )


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    tenant_app = FastAPI()

    @tenant_app.get("/items/{item_id}", dependencies=[Depends(rate_limit(100, 60))])
    async def item(
        item_id: int,
        user: Annotated[UserIdentity, Depends(get_current_user)],
        session: Annotated[AsyncSession, Depends(get_db_session)],
    ) -> dict[str, Any]:
        one = (await session.execute(text("SELECT 1"))).scalar_one()
        return {"item": item_id, "user": user.id, "one": one}

    reports = FastAPI()

    @reports.get("/daily/{day}")
    async def daily(day: str) -> dict[str, str]:
        return {"day": day}

    tenant_app.mount("/reports", reports)
    static = tmp_path / "static"
    static.mkdir()
    (static / "app.js").write_text("console.log('hi')", encoding="utf-8")

    app = FastAPI()
    app.mount("/t/{tenant}", tenant_app)
    app.mount("/static", StaticFiles(directory=static))
    init_app_kernel(app, _settings(tmp_path), api_prefix=API_PREFIX)
    return app


async def _scrape(http: httpx.AsyncClient) -> dict[str, set[str]]:
    """Routes of each ``http_requests`` sample, by status class."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    routes: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name == "http_requests":
            for sample in family.samples:
                if sample.name == "http_requests_total":
                    routes.setdefault(sample.labels["status_class"], set()).add(
                        sample.labels["route"]
                    )
    return routes


async def test_kernel_dependencies_work_below_a_mount(app: FastAPI) -> None:
    async with serve(app) as http:
        alice = await add_user(app.state.app_kernel, "alice")
        token = (await login(http, "alice"))["access_token"]

        answered = await http.get("/t/acme/items/7", headers=bearer(token))
        anonymous = await http.get("/t/acme/items/7")

    assert answered.status_code == 200, answered.text
    assert answered.json() == {"item": 7, "user": alice["id"], "one": 1}
    assert answered.headers["ratelimit-policy"].startswith('"route";q=100')
    assert anonymous.status_code == 401


async def test_labels_records_and_access_lines_carry_the_mount_templates(app: FastAPI) -> None:
    log = io.StringIO()
    async with serve(app, log_stream=log) as http:
        kernel = app.state.app_kernel
        await add_user(kernel, "alice")
        token = (await login(http, "alice"))["access_token"]
        buffer = kernel.request_metrics.buffer
        buffer.take(len(buffer))
        for tenant in ("acme", "beta", "gamma"):
            assert (await http.get(f"/t/{tenant}/items/1", headers=bearer(token))).is_success
            assert (await http.get(f"/t/{tenant}/reports/daily/2026-11-27")).is_success
        assert (await http.get("/static/app.js")).is_success
        assert (await http.get("/t/acme/nowhere")).status_code == 404
        records = as_records(RECORD_FIELDS, buffer.take(len(buffer)))
        routes = await _scrape(http)

    expected = {
        "/t/{tenant}/items/{item_id}",
        "/t/{tenant}/reports/daily/{day}",
        "/static/{path}",
        "/t/{tenant}/{path}",  # no route of the mounted app: the mount and its rest
    }
    assert {record["route"] for record in records} == expected
    assert routes["2xx"] >= expected - {"/t/{tenant}/{path}"}
    assert "/t/{tenant}/{path}" in routes["4xx"]
    every_label = set().union(*routes.values())
    assert not any(tenant in label for label in every_label for tenant in ("acme", "beta"))
    logged = {line["route"] for line in access_lines(log) if line["route"].startswith("/t/")}
    assert logged == {r for r in expected if r.startswith("/t/")}


async def test_a_kernel_app_mounted_below_another_app_keeps_its_own_templates(
    tmp_path: Path,
) -> None:
    kernel_app = FastAPI()

    @kernel_app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    init_app_kernel(kernel_app, _settings(tmp_path))
    parent = FastAPI()
    parent.mount("/svc", kernel_app)
    log = io.StringIO()
    transport = httpx.ASGITransport(app=parent)
    async with (
        kernel_app.router.lifespan_context(kernel_app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        configure_logging(level="INFO", fmt="json", stream=log)
        assert (await http.get("/svc/items/3")).json() == {"item": 3}
    [line] = access_lines(log)
    assert line["route"] == "/items/{item_id}"
