"""The spec's quick start: a widget service on the kernel's embedded defaults.

No Redis or PostgreSQL is needed: users, audit and coordination live in SQLite
files under ``./.app_kernel``. Run it with ``make run`` (debug mode, which
needs no ``JWT_SECRET``) and see the README for creating the first admin and
logging in.
"""

from __future__ import annotations

import shutil
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from app_kernel import ServiceConfig, create_service
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


async def disk_space() -> tuple[bool, str]:
    """Ready while the disk holding the data folder has at least 100 MB free."""
    free = shutil.disk_usage(".").free
    return free > 100 * 1024 * 1024, f"{free // (1024 * 1024)} MB free"


app = create_service(
    name="widget_service",
    routers=[router],
    config=ServiceConfig.from_env(),
    health_checks=[disk_space],
)
