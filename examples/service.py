"""The spec's quick start: a widget service on the kernel's embedded defaults.

No Redis or PostgreSQL is needed: users, audit and coordination live in SQLite
files under ``./.app_kernel``. Run it with ``make run`` (debug mode, which
needs no ``JWT_SECRET``) and see the README for creating the first admin and
logging in.

``make run`` also starts a worker process (``app-kernel worker
examples.service:app``) that runs the ``send_welcome`` task enqueued by
``POST /api/v1/jobs/welcome``, and stores the request metrics that
``manifest.yaml`` turns on (an admin reads them under ``/metrics/requests``).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException

from app_kernel import JobContext, ServiceConfig, create_service, get_job_client
from app_kernel.auth import UserIdentity, get_current_user

router = APIRouter(prefix="/widgets", tags=["widgets"])

# In-process storage keeps the example small; a real service would use its database.
_widgets: dict[str, dict[str, Any]] = {}

CurrentUser = Annotated[UserIdentity, Depends(get_current_user)]


@router.post("", status_code=201)
async def create_widget(data: dict[str, Any], user: CurrentUser) -> dict[str, Any]:
    """Create a widget owned by the caller."""
    widget = {**data, "id": uuid.uuid4().hex, "owner": user.id}
    _widgets[widget["id"]] = widget
    return widget


@router.get("")
async def list_widgets(user: CurrentUser) -> list[dict[str, Any]]:
    """The caller's widgets."""
    return [w for w in _widgets.values() if w["owner"] == user.id]


jobs_router = APIRouter(prefix="/jobs", tags=["jobs"])


async def send_welcome(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Runs in the worker process: pretend to send a welcome email."""
    ctx.log.info("sending welcome email", to=payload["email"], attempt=ctx.attempt)
    await ctx.progress(1.0, "sent")
    return {"sent_to": payload["email"]}


@jobs_router.post("/welcome", status_code=202)
async def enqueue_welcome(data: dict[str, Any], user: CurrentUser) -> dict[str, Any]:
    """Queue a welcome email for ``data["email"]``; a worker sends it."""
    result = await get_job_client().enqueue(
        "send_welcome", {"email": str(data.get("email", ""))}, user_id=user.id
    )
    return {"job_id": result.job_id, "deduplicated": result.deduplicated}


@jobs_router.get("/{job_id}")
async def job_status(job_id: str, user: CurrentUser) -> dict[str, Any]:
    """The caller's job: status, attempts and result."""
    info = await get_job_client().get_job(job_id)
    if info is None or info.user_id != user.id:
        raise HTTPException(status_code=404, detail="no such job")
    return info.to_dict()


async def disk_space() -> tuple[bool, str]:
    """Ready while the disk holding the data folder has at least 100 MB free."""
    free = shutil.disk_usage(".").free
    return free > 100 * 1024 * 1024, f"{free // (1024 * 1024)} MB free"


app = create_service(
    name="widget_service",
    routers=[router, jobs_router],
    tasks={"send_welcome": send_welcome},
    config=ServiceConfig.from_env(),
    health_checks=[disk_space],
    manifest=Path(__file__).with_name("manifest.yaml"),
)
