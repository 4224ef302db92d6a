"""A backend failure is answered 503 problem+json, without its cause."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.middleware import Middleware

from app_kernel import BackendUnavailable, KernelSettings, init_app_kernel
from app_kernel.types import ASGIApp, Receive, Scope, Send


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    """Built outside the event loop: building a kernel hashes its dummy password."""
    app = FastAPI()

    @app.get("/needs-backend")
    async def needs_backend() -> None:
        msg = "redis at 10.0.0.7:6379 refused the connection"
        raise BackendUnavailable(msg)

    init_app_kernel(app, KernelSettings(debug=True, data_dir=str(tmp_path)))
    return app


async def _get_503(app: FastAPI, path: str) -> httpx.Response:
    """GET ``path`` on a started ``app``; check the answer is a 503 problem."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get(path)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    return response


async def test_backend_unavailable_is_a_503_problem(app: FastAPI) -> None:
    response = await _get_503(app, "/needs-backend")
    body = response.json()
    assert body["status"] == 503
    assert body["request_id"] == response.headers["x-request-id"]
    assert "10.0.0.7" not in response.text


class _FailingBackend:
    """A middleware whose backend call fails, the way a Redis-backed one would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            msg = "redis at 10.0.0.7:6379: Too many connections"
            raise BackendUnavailable(msg)
        await self.app(scope, receive, send)


@pytest.fixture
def app_failing_in_middleware(tmp_path: Path) -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"ok": "yes"}

    init_app_kernel(app, KernelSettings(debug=True, data_dir=str(tmp_path)))
    # Innermost: inside the kernel's error middleware, above FastAPI's handlers.
    app.user_middleware.append(Middleware(_FailingBackend))
    return app


async def test_backend_failure_in_a_middleware_is_a_503_problem(
    app_failing_in_middleware: FastAPI,
) -> None:
    response = await _get_503(app_failing_in_middleware, "/ok")
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "10.0.0.7" not in response.text
