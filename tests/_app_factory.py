"""Build kernel apps for tests and talk to them over HTTP with their lifespan running.

httpx's ``ASGITransport`` does not run an app's lifespan, so :func:`serve` enters it
around the client: the kernel opens before the first request and closes afterwards.
Build apps in sync fixtures: constructing one is synchronous work that the root
conftest's event-loop guard would count against an async test.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from app_kernel import KernelSettings, init_app_kernel
from app_kernel.observability.logging import configure_logging
from app_kernel.settings import RedisSettings

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
"""A token secret long enough (48 bytes) for the start-up check outside debug mode."""

SECURITY_HEADERS = (
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "content-security-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "permissions-policy",
)
"""Headers the kernel adds to every HTTP response (HSTS only over https)."""

PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


def settings_for(tmp_path: Path, **overrides: Any) -> KernelSettings:
    """Debug-mode settings (no secret needed) keeping every file under ``tmp_path``."""
    values: dict[str, Any] = {"debug": True, "data_dir": str(tmp_path)}
    values.update(overrides)
    return KernelSettings(**values)


class Signup(BaseModel):
    username: str
    password: str = Field(min_length=12)


def demo_router() -> APIRouter:
    """Routes for each outcome: ok, 500, HTTPException, 422 and a body read.

    Mounted under ``/api/v1`` by :func:`build_app`: ``/api/v1/items/{item_id}``,
    ``/api/v1/boom``, ``/api/v1/teapot``, ``/api/v1/signup`` and ``/api/v1/upload``.
    """
    router = APIRouter()
    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @router.get("/boom")
    async def boom() -> None:
        msg = "the vault password is hunter2 (see /srv/internal/app.py)"
        raise RuntimeError(msg)

    @router.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(418, "short and stout", headers={"X-Teapot": "yes"})

    @router.post("/signup")
    async def signup(body: Signup) -> dict[str, str]:
        return {"username": body.username}

    @router.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    router.include_router(items)
    return router


def build_app(settings: KernelSettings, *, prefix: str = "/api/v1") -> FastAPI:
    """A FastAPI app with :func:`demo_router` under ``prefix`` and the kernel mounted."""
    app = FastAPI(title="test app")
    app.include_router(demo_router(), prefix=prefix)
    init_app_kernel(app, settings)
    return app


def backend_settings(
    tmp_path: Path,
    *,
    redis_url: str | None,
    redis_key_prefix: str | None,
    database_url: str,
    **overrides: Any,
) -> KernelSettings:
    """:func:`settings_for` on a given coordination backend (Redis or, with
    ``redis_url=None``, embedded SQLite) and SQL database."""
    redis = RedisSettings()
    if redis_url is not None:
        redis = RedisSettings(url=redis_url, key_prefix=redis_key_prefix or "app_kernel:")
    return settings_for(tmp_path, redis=redis, database_url=database_url, **overrides)


@asynccontextmanager
async def serve(
    app: FastAPI,
    *,
    base_url: str = "http://testserver",
    log_stream: io.StringIO | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client sending requests to it in-process.

    With ``log_stream``, logging is re-pointed at it as JSON lines once the kernel has
    started (the kernel configures logging to stderr when it opens).
    """
    async with app.router.lifespan_context(app):
        if log_stream is not None:
            configure_logging(level="INFO", fmt="json", stream=log_stream)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines written to ``stream``."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The kernel's access log lines written to ``stream``."""
    return [line for line in log_lines(stream) if line.get("logger") == "app_kernel.access"]
