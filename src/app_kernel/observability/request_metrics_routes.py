"""``GET /metrics/requests...``: stored request metrics for admins.

The routes do not know what an admin is: the composition root passes the
dependency that decides (it raises 401 or 403 for everybody else). They live
below the Prometheus ``/metrics`` route on paths of their own, so both work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app_kernel._runtime import kernel_of_scope
from app_kernel.observability.query_params import (
    PageOffset,
    TextFilter,
    TimeBound,
    TraceIdFilter,
)
from app_kernel.observability.request_metrics_store import MAX_QUERY_LIMIT, RequestMetricsStore

__all__ = ("SLOW_REQUEST_MS", "request_metrics_router")

SLOW_REQUEST_MS = 1000.0
"""``/slow`` lists requests that took at least this long by default."""

Limit = Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)]
Offset = PageOffset
Status = Annotated[int | None, Query(ge=100, le=599)]
Latency = Annotated[float | None, Query(ge=0)]


@dataclass(frozen=True, slots=True)
class _Filters:
    """The filters every list route takes, declared once (FastAPI reads them as query
    parameters of the same names)."""

    path_prefix: TextFilter = None
    method: TextFilter = None
    route: TextFilter = None
    trace_id: TraceIdFilter = None
    since: TimeBound = None
    until: TimeBound = None

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "path_prefix": self.path_prefix,
            "method": self.method,
            "route": self.route,
            "trace_id": self.trace_id,
            "since": self.since,
            "until": self.until,
        }


Filters = Annotated[_Filters, Depends()]


def request_metrics_router(path: str, admin_dependency: Callable[..., Any]) -> APIRouter:
    """A router answering ``GET {path}``, ``{path}/stats``, ``{path}/slow`` and ``{path}/errors``.

    The lists take the filters ``path_prefix``, ``method``, ``route``,
    ``trace_id``, ``status_min``, ``status_max``, ``min_latency_ms``, ``user_id``,
    ``workspace_id``, ``since`` and ``until`` (ISO 8601, UTC without an offset),
    and ``limit`` (1 to 1000, default 100) and ``offset`` (0 to 10**9). Text
    filters hold at most 1024 characters, and ``trace_id`` is 32
    lowercase hex digits; anything else is a 422. They answer
    ``{"items": [...], "limit", "offset", "next_offset"}`` newest first,
    ``next_offset`` being None on the last page. ``/slow`` defaults
    ``min_latency_ms`` to 1000 and ``/errors`` ``status_min`` to 400. ``/stats``
    takes ``hours`` (default 24) and answers
    :meth:`RequestMetricsStore.get_stats`.

    Args:
        path: the routes' base path, such as ``/metrics/requests``.
        admin_dependency: a FastAPI dependency that raises (401/403) unless the
            caller is an admin.
    """
    router = APIRouter(tags=["request metrics"], dependencies=[Depends(admin_dependency)])

    def store_of(request: Request) -> RequestMetricsStore:
        return RequestMetricsStore(kernel_of_scope(request.scope).database)

    async def page(
        request: Request,
        response: Response,
        limit: int,
        offset: int,
        **filters: Any,
    ) -> dict[str, Any]:
        # One more than asked tells whether another page exists; at the 1000 cap a
        # full page announces a next one, which may then be empty.
        fetch = min(limit + 1, MAX_QUERY_LIMIT)
        items = await store_of(request).get_recent(limit=fetch, offset=offset, **filters)
        more = len(items) > limit or (fetch == limit and len(items) == limit)
        response.headers["Cache-Control"] = "no-store"
        return {
            "items": items[:limit],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if more else None,
        }

    @router.get(path)
    async def list_request_metrics(
        request: Request,
        response: Response,
        filters: Filters,
        status_min: Status = None,
        status_max: Status = None,
        min_latency_ms: Latency = None,
        user_id: TextFilter = None,
        workspace_id: TextFilter = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Recent requests matching every filter, newest first."""
        return await page(
            request,
            response,
            limit,
            offset,
            status_min=status_min,
            status_max=status_max,
            min_latency_ms=min_latency_ms,
            user_id=user_id,
            workspace_id=workspace_id,
            **filters.as_kwargs(),
        )

    @router.get(f"{path}/stats")
    async def request_metrics_stats(
        request: Request,
        response: Response,
        hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24,
    ) -> dict[str, Any]:
        """Totals, latency percentiles, slowest and most failing routes."""
        response.headers["Cache-Control"] = "no-store"
        return await store_of(request).get_stats(hours=hours)

    @router.get(f"{path}/slow")
    async def slow_requests(
        request: Request,
        response: Response,
        filters: Filters,
        min_latency_ms: Annotated[float, Query(ge=0)] = SLOW_REQUEST_MS,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Requests that took at least ``min_latency_ms`` (default 1000), newest first."""
        return await page(
            request,
            response,
            limit,
            offset,
            min_latency_ms=min_latency_ms,
            **filters.as_kwargs(),
        )

    @router.get(f"{path}/errors")
    async def error_requests(
        request: Request,
        response: Response,
        filters: Filters,
        status_min: Annotated[int, Query(ge=400, le=599)] = 400,
        status_max: Status = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Requests answered with a status of at least ``status_min`` (400), newest first."""
        return await page(
            request,
            response,
            limit,
            offset,
            status_min=status_min,
            status_max=status_max,
            **filters.as_kwargs(),
        )

    return router
