"""``GET /audit``: the audit trail for admins, page by page.

The route does not know what an admin is: the composition root passes the
dependency that decides (it raises 401 or 403 for everybody else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app_kernel._runtime import kernel_of_scope
from app_kernel.observability.audit import MAX_QUERY_LIMIT
from app_kernel.observability.query_params import PageOffset, TextFilter, TimeBound

__all__ = ("audit_router",)


def audit_router(path: str, admin_dependency: Callable[..., Any]) -> APIRouter:
    """A router answering ``GET {path}`` with audit events, newest first.

    Query parameters filter on ``actor_id``, ``action``, ``resource_type``,
    ``resource_id``, ``status`` and the exclusive time bounds ``after`` and
    ``before`` (ISO 8601; without an offset they mean UTC). ``limit`` is 1 to
    1000 (default 100) and ``offset`` 0 to 10**9; text filters hold at most 1024
    characters. Anything else is a 422 (see
    :mod:`app_kernel.observability.query_params`).
    The answer is ``{"items": [...], "limit": n, "offset": n, "next_offset": n}``,
    ``next_offset`` being None on the last page.

    Args:
        path: the route's path, such as ``/audit``.
        admin_dependency: a FastAPI dependency that raises (401/403) unless the
            caller is an admin.
    """
    router = APIRouter(tags=["audit"])

    @router.get(path, dependencies=[Depends(admin_dependency)])
    async def list_audit_events(
        request: Request,
        response: Response,
        actor_id: TextFilter = None,
        action: TextFilter = None,
        resource_type: TextFilter = None,
        resource_id: TextFilter = None,
        status: TextFilter = None,
        after: TimeBound = None,
        before: TimeBound = None,
        limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = 100,
        offset: PageOffset = 0,
    ) -> dict[str, Any]:
        """Audit events matching every given filter, newest first."""
        store = kernel_of_scope(request.scope).audit.store
        # One more than asked tells whether another page exists.
        events = await store.query(
            actor_id=actor_id,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            status=status,
            after=after,
            before=before,
            limit=limit + 1,
            offset=offset,
        )
        response.headers["Cache-Control"] = "no-store"
        return {
            "items": [event.to_dict() for event in events[:limit]],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if len(events) > limit else None,
        }

    return router
