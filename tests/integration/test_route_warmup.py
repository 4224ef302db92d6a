"""The app's routes are prepared while the service starts, not by its first request.

FastAPI reads each dependency's signature when it prepares a route. The probe
below counts those reads: none may happen once the service is serving.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from fastapi import APIRouter, Depends, FastAPI
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from _app_factory import settings_for
from _auth_helpers import client, running
from app_kernel import init_app_kernel


class SignatureProbe:
    """A dependency that counts how often its signature is inspected."""

    def __init__(self) -> None:
        self.reads = 0

    @property
    def __signature__(self) -> inspect.Signature:
        self.reads += 1
        return inspect.Signature()

    def __call__(self) -> None:
        return None


@pytest.fixture
def probe() -> SignatureProbe:
    return SignatureProbe()


@pytest.fixture
def app(tmp_path: Path, probe: SignatureProbe) -> FastAPI:
    router, nested = APIRouter(), APIRouter(prefix="/nested")

    @router.get("/thing")
    async def thing(_: None = Depends(probe)) -> dict[str, bool]:
        return {"ok": True}

    @nested.get("/deeper")
    async def deeper(_: None = Depends(probe)) -> dict[str, bool]:
        return {"ok": True}

    router.include_router(nested)
    app = FastAPI()
    app.include_router(router, prefix="/api")
    init_app_kernel(app, settings_for(tmp_path))
    return app


async def test_the_first_requests_prepare_no_route(app: FastAPI, probe: SignatureProbe) -> None:
    async with running(app), client(app) as http:
        prepared = probe.reads
        assert (await http.get("/nowhere")).status_code == 404  # walks every route
        assert (await http.get("/api/thing")).status_code == 200
        assert (await http.get("/api/nested/deeper")).status_code == 200
    assert probe.reads == prepared


class PickyRoute(BaseRoute):
    """An app's own route class that cannot match the warm-up's bare scope."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if not scope["headers"]:
            msg = "this route needs headers"
            raise LookupError(msg)
        return Match.NONE, {}


async def test_a_route_that_fails_the_probe_does_not_stop_start_up(
    app: FastAPI, probe: SignatureProbe
) -> None:
    app.router.routes.insert(0, PickyRoute())
    async with running(app), client(app) as http:
        prepared = probe.reads
        assert (await http.get("/api/thing")).status_code == 200
    assert probe.reads == prepared  # the routes after it were still prepared


async def test_the_openapi_document_is_built_before_serving(app: FastAPI) -> None:
    assert app.openapi_schema is None
    async with running(app), client(app) as http:
        built = app.openapi_schema
        assert built is not None
        document = (await http.get("/openapi.json")).json()
    assert "/api/thing" in document["paths"]
    assert app.openapi_schema is built  # served from what start-up built


async def test_a_document_that_cannot_be_built_does_not_stop_start_up(app: FastAPI) -> None:
    def broken() -> dict[str, object]:
        msg = "this schema cannot be built"
        raise TypeError(msg)

    app.openapi = broken  # type: ignore[method-assign]
    async with running(app), client(app) as http:
        assert (await http.get("/api/thing")).status_code == 200
