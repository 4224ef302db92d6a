"""Mount a kernel on a FastAPI app: ``init_app_kernel`` and ``create_service``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from app_kernel._runtime import set_current
from app_kernel.auth.deps import (
    API_KEY_SCHEME_NAME,
    BEARER_SCHEME_NAME,
    api_key_scheme_definition,
    require_admin,
)
from app_kernel.auth.routes import auth_router
from app_kernel.errors import KernelError
from app_kernel.jobs.registry import JobRegistry, ProcessorFunc
from app_kernel.kernel import Kernel
from app_kernel.observability.audit_routes import audit_router
from app_kernel.observability.health import health_router
from app_kernel.observability.metrics_routes import metrics_guard, metrics_router
from app_kernel.observability.request_metrics_routes import request_metrics_router
from app_kernel.reliability.idempotency_http import IdempotencyMiddleware
from app_kernel.service_config import ServiceConfig, to_kernel_settings
from app_kernel.settings import KernelSettings
from app_kernel.types import HealthCheck
from app_kernel.web.docs import install_offline_docs
from app_kernel.web.head_requests import HeadRequestMiddleware
from app_kernel.web.route_warmup import prepare_openapi, prepare_routes
from app_kernel.web.stack import install_http_layer

__all__ = ("create_service", "init_app_kernel")

IsAdmin = Callable[[Mapping[str, Any]], bool]
REQUEST_METRICS_PATH = "/metrics/requests"


def init_app_kernel(
    app: FastAPI,
    settings: KernelSettings,
    registry: Any = None,
    *,
    user_store: Any = None,
    is_admin: IsAdmin | None = None,
    api_prefix: str = "",
) -> Kernel:
    """Wire the kernel into ``app``: middleware, error handlers, routes, lifespan.

    The kernel's connections open when the app's lifespan starts and close when
    it ends; the app's own lifespan runs inside. The kernel becomes the
    process's current kernel, read by the module-level accessors.

    Args:
        app: the FastAPI application.
        settings: frozen kernel settings.
        registry: the app's job registry, for the job client.
        user_store: the app's ``UserStore``; the kernel's SQL store if None.
        is_admin: decides from a user record whether the user is an admin.
        api_prefix: prefix of the auth routes (``create_service`` passes its own).

    Raises:
        KernelError: the app already has a kernel.
    """
    if getattr(app.state, "app_kernel", None) is not None:
        msg = "init_app_kernel() was already called on this app; call it once per app"
        raise KernelError(msg)
    kernel = Kernel(settings, registry, user_store=user_store, is_admin=is_admin)
    app.state.app_kernel = kernel
    set_current(kernel)

    # Innermost (added first): HEAD on GET routes, then idempotency, which sees
    # the app's own response, inside the body limit.
    app.add_middleware(HeadRequestMiddleware, routes=app.router.routes)
    app.add_middleware(
        IdempotencyMiddleware,
        service=kernel.idempotency,
        identify=kernel.optional_user,
        exempt_prefixes=(f"{api_prefix}{settings.features.auth_prefix}/",),
    )
    install_http_layer(app, settings)
    install_offline_docs(app)
    login = f"{api_prefix}{settings.features.auth_prefix}/login"
    _document_security(app, login if settings.features.enable_auth_routes else None)
    features = settings.features
    if features.enable_health_routes:
        app.include_router(
            health_router(
                health_path=features.health_path,
                ready_path=features.ready_path,
                checks=kernel.readiness_checks,
                timeout_seconds=settings.http.readiness_timeout_seconds,
            )
        )

    if features.enable_auth_routes:
        app.include_router(auth_router(features), prefix=api_prefix)
    if features.enable_audit_routes:
        app.include_router(audit_router(features.audit_path, require_admin))
    if features.enable_metrics:
        guard = metrics_guard(
            features.protect_metrics,
            optional_user=kernel.optional_user,
            token_hash=settings.observability.metrics_token_hash,
        )
        app.include_router(metrics_router(features.metrics_path, guard))
    if settings.observability.request_metrics.enabled:
        app.include_router(request_metrics_router(REQUEST_METRICS_PATH, require_admin))

    app_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        await kernel.open()
        try:
            async with app_lifespan(application) as state:
                # After the app's own start-up, which may still add routes.
                await asyncio.to_thread(prepare_routes, tuple(app.router.routes))
                await asyncio.to_thread(prepare_openapi, app)
                yield state
        finally:
            await kernel.close()

    app.router.lifespan_context = lifespan
    return kernel


def _document_security(app: FastAPI, token_url: str | None) -> None:
    """Finish the OpenAPI document's security.

    The kernel's user dependencies show up as the bearer scheme only (see
    :mod:`app_kernel.auth.deps`); every operation listing it also accepts an
    API key, so the ``X-API-Key`` scheme is added beside it. With the auth
    routes mounted, the "Authorize" button posts to the real login route.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.get("components", {}).get("securitySchemes", {})
            ours = schemes.get(BEARER_SCHEME_NAME)
            if ours is not None:
                password = ours.get("flows", {}).get("password")
                if token_url is not None and password is not None:
                    password["tokenUrl"] = token_url  # the app's own schemes keep theirs
                schemes.setdefault(API_KEY_SCHEME_NAME, api_key_scheme_definition())
                _add_api_key_beside_bearer(schema)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def _add_api_key_beside_bearer(schema: dict[str, Any]) -> None:
    bearer: dict[str, list[str]] = {BEARER_SCHEME_NAME: []}
    api_key: dict[str, list[str]] = {API_KEY_SCHEME_NAME: []}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and bearer in security and api_key not in security:
                security.insert(security.index(bearer) + 1, api_key)


def create_service(
    name: str,
    routers: Sequence[APIRouter],
    config: ServiceConfig | None = None,
    api_prefix: str = "/api/v1",
    *,
    tasks: Mapping[str, ProcessorFunc] | JobRegistry | None = None,
    user_store: Any = None,
    is_admin: IsAdmin | None = None,
    health_checks: Sequence[HealthCheck] = (),
    manifest: str | Path | None = None,
) -> FastAPI:
    """Build a complete FastAPI service on the kernel.

    The app's routers (and the kernel's auth routes) are mounted under
    ``api_prefix``; health, metrics and audit routes stay at the root.

    Args:
        name: the service name, used in logs and the docs title.
        routers: the app's routers.
        config: short settings; read from the environment when None.
        api_prefix: prefix of the app's routes.
        tasks: task name to processor (or a ready :class:`JobRegistry`); workers
            started with ``app-kernel worker MODULE:APP`` run them.
        user_store: the app's ``UserStore``; the kernel's SQL store if None.
        is_admin: decides from a user record whether the user is an admin.
        health_checks: async callables run by the readiness probe.
        manifest: path of a ``manifest.yaml`` with further settings.

    Raises:
        SettingsError: a setting or environment variable is invalid.
        KernelError: an empty ``name`` or a malformed ``api_prefix``.
    """
    if not isinstance(name, str) or not name.strip():
        msg = f"name: expected the service's name (logs, docs title), got {name!r}"
        raise KernelError(msg)
    if api_prefix and (not api_prefix.startswith("/") or api_prefix.endswith("/")):
        msg = f"api_prefix: expected a path such as '/api/v1', got {api_prefix!r}"
        raise KernelError(msg)
    settings = to_kernel_settings(
        config if config is not None else ServiceConfig.from_env(),
        name=name,
        health_checks=health_checks,
        manifest=manifest,
    )
    app = FastAPI(title=name)
    for router in routers:
        app.include_router(router, prefix=api_prefix)
    registry = tasks if isinstance(tasks, JobRegistry) else JobRegistry()
    if not isinstance(tasks, JobRegistry):
        for task_name, processor in (tasks or {}).items():
            registry.register(task_name, processor)
    init_app_kernel(
        app, settings, registry, user_store=user_store, is_admin=is_admin, api_prefix=api_prefix
    )
    return app
