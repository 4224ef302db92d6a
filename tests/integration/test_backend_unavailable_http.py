"""A backend failure is answered 503 problem+json, without its cause."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app_kernel import BackendUnavailable, KernelSettings, init_app_kernel


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


async def test_backend_unavailable_is_a_503_problem(app: FastAPI) -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/needs-backend")

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["status"] == 503
    assert body["request_id"] == response.headers["x-request-id"]
    assert "10.0.0.7" not in response.text
