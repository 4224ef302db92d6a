"""A small service on the kernel's embedded defaults: no Redis, no PostgreSQL.

Run it with ``make run`` (or ``DEBUG=true app-kernel serve examples.service:app``)
and try ``curl localhost:8000/healthz`` and ``curl localhost:8000/readyz``.
"""

from __future__ import annotations

import shutil

from fastapi import APIRouter

from app_kernel import ServiceConfig, create_service

router = APIRouter(prefix="/widgets", tags=["widgets"])


@router.get("")
async def list_widgets() -> list[dict[str, str]]:
    """The widgets this service knows."""
    return [{"id": "1", "name": "sprocket"}]


async def disk_space() -> tuple[bool, str]:
    """Ready while the data folder's disk has at least 100 MB free."""
    free = shutil.disk_usage(".").free
    return free > 100 * 1024 * 1024, f"{free // (1024 * 1024)} MB free"


app = create_service(
    name="widget_service",
    routers=[router],
    config=ServiceConfig.from_env(),
    health_checks=[disk_space],
)
