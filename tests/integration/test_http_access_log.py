"""The access log: one JSON line per request, naming the route template, never the raw path."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from fastapi import FastAPI

from _app_factory import access_lines, build_app, serve, settings_for
from app_kernel.settings import ObservabilitySettings


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return build_app(settings_for(tmp_path))


async def test_included_router_logs_the_full_template(app: FastAPI) -> None:
    log = io.StringIO()
    async with serve(app, log_stream=log) as client:
        response = await client.get("/api/v1/items/42", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    [line] = access_lines(log)
    assert line["route"] == "/api/v1/items/{item_id}"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert line["request_id"] == "req-42"
    assert isinstance(line["duration_ms"], int | float)
    assert "42" not in line["route"]


async def test_unknown_path_logs_unmatched(app: FastAPI) -> None:
    log = io.StringIO()
    async with serve(app, log_stream=log) as client:
        await client.get("/api/v1/users/12345/secrets")
    [line] = access_lines(log)
    assert line["route"] == "__unmatched__"
    assert line["status"] == 404


async def test_route_of_a_validation_error_is_still_the_template(app: FastAPI) -> None:
    log = io.StringIO()
    async with serve(app, log_stream=log) as client:
        await client.get("/api/v1/items/not-a-number")
    [line] = access_lines(log)
    assert (line["route"], line["status"]) == ("/api/v1/items/{item_id}", 422)


async def test_access_log_can_be_turned_off(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, observability=ObservabilitySettings(access_log=False))
    app = await asyncio.to_thread(build_app, settings)
    log = io.StringIO()
    async with serve(app, log_stream=log) as client:
        response = await client.get("/api/v1/items/1")
    assert response.status_code == 200
    assert access_lines(log) == []
