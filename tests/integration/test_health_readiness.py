"""Liveness (/healthz) and readiness (/readyz) probes."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from _app_factory import backend_settings, build_app, serve, settings_for
from app_kernel.settings import HttpSettings

TIMEOUT = 0.2


class Probe:
    """Readiness checks for one app, counting how often the passing one ran."""

    def __init__(self) -> None:
        self.calls = 0

    async def passing_check(self) -> tuple[bool, str]:
        self.calls += 1
        return True, "all good"

    async def failing_check(self) -> tuple[bool, str]:
        return False, "queue is 9000 jobs behind"

    async def raising_check(self) -> tuple[bool, str]:
        msg = "cache went away"
        raise ConnectionError(msg)

    async def hanging_check(self) -> tuple[bool, str]:
        await asyncio.Event().wait()
        return True, "never"


@pytest.fixture
def probe() -> Probe:
    return Probe()


def _app(tmp_path: Path, *checks: Any) -> FastAPI:
    http = HttpSettings(readiness_timeout_seconds=TIMEOUT)
    return build_app(settings_for(tmp_path, http=http, health_checks=checks))


@pytest.fixture
def mixed_app(tmp_path: Path, probe: Probe) -> FastAPI:
    return _app(
        tmp_path, probe.passing_check, probe.failing_check, probe.raising_check, probe.hanging_check
    )


@pytest.fixture
def passing_app(tmp_path: Path, probe: Probe) -> FastAPI:
    return _app(tmp_path, probe.passing_check)


def _by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in body["checks"]}


async def test_any_failing_check_makes_readiness_503_listing_every_check(
    mixed_app: FastAPI,
) -> None:
    async with serve(mixed_app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    checks = _by_name(body)
    assert set(checks) == {
        "database",
        "sqlite",
        "passing_check",
        "failing_check",
        "raising_check",
        "hanging_check",
    }
    for check in checks.values():
        assert set(check) == {"name", "ok", "message", "duration_ms"}
        assert isinstance(check["duration_ms"], int | float)
        assert check["duration_ms"] >= 0
    assert {name for name, check in checks.items() if check["ok"]} == {
        "database",
        "sqlite",
        "passing_check",
    }
    assert checks["passing_check"]["message"] == "all good"
    assert checks["failing_check"]["message"] == "queue is 9000 jobs behind"
    assert "ConnectionError" in checks["raising_check"]["message"]
    assert "cache went away" in checks["raising_check"]["message"]
    assert "timed out" in checks["hanging_check"]["message"]
    assert checks["hanging_check"]["duration_ms"] >= TIMEOUT * 1000 * 0.9


async def test_all_passing_checks_make_readiness_200(passing_app: FastAPI) -> None:
    async with serve(passing_app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    checks = _by_name(body)
    assert set(checks) == {"database", "sqlite", "passing_check"}
    assert all(check["ok"] for check in checks.values())


async def test_readiness_runs_the_checks_on_every_call(passing_app: FastAPI, probe: Probe) -> None:
    async with serve(passing_app) as client:
        await client.get("/readyz")
        await client.get("/readyz")
    assert probe.calls == 2


async def test_liveness_runs_no_checks(mixed_app: FastAPI, probe: Probe) -> None:
    """/healthz answers 200 at once even while readiness checks fail or hang."""
    async with serve(mixed_app) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert probe.calls == 0


async def test_both_probes_answer_head_like_get(mixed_app: FastAPI, passing_app: FastAPI) -> None:
    """Some load balancers and monitors probe with HEAD; the OpenAPI document
    still lists one GET operation per probe."""
    async with serve(mixed_app) as client:
        live, not_ready = await client.head("/healthz"), await client.head("/readyz")
    async with serve(passing_app) as client:
        ready = await client.head("/readyz")
        document = (await client.get("/openapi.json")).json()
    assert (live.status_code, not_ready.status_code, ready.status_code) == (200, 503, 200)
    assert live.headers["content-type"] == "application/json"
    for probe in ("/healthz", "/readyz"):
        assert list(document["paths"][probe]) == ["get"]


async def test_liveness_stays_up_while_a_backend_is_down(passing_app: FastAPI) -> None:
    async with serve(passing_app) as client:
        await passing_app.state.app_kernel.sqlite.close()  # the embedded store is gone
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert _by_name(ready.json())["sqlite"]["ok"] is False


async def test_checks_with_the_same_name_are_numbered(tmp_path: Path) -> None:
    async def ping(target: str) -> tuple[bool, str]:
        return True, target

    app = _app(tmp_path, functools.partial(ping, "a"), functools.partial(ping, "b"))
    async with serve(app) as client:
        checks = _by_name((await client.get("/readyz")).json())
    assert checks["ping"]["message"] == "a"
    assert checks["ping#2"]["message"] == "b"


@pytest.fixture
def backend_app(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    coordination_url: str | None,
    sql_database_url: str,
) -> FastAPI:
    prefix = request.getfixturevalue("redis_key_prefix") if coordination_url else None
    settings = backend_settings(
        tmp_path,
        redis_url=coordination_url,
        redis_key_prefix=prefix,
        database_url=sql_database_url,
    )
    return build_app(settings)


async def test_readiness_checks_the_configured_backends(
    backend_app: FastAPI, coordination_url: str | None, sql_database_url: str
) -> None:
    async with serve(backend_app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    checks = _by_name(response.json())
    coordination = "redis" if coordination_url else "sqlite"
    database = "postgresql" if sql_database_url.startswith("postgresql") else "sqlite"
    assert set(checks) == {"database", coordination}
    assert checks[coordination]["ok"] is True
    assert checks["database"]["ok"] is True
    assert database in checks["database"]["message"]
