"""The kernel's middleware stack, in one fixed order.

Outermost first, as a request meets them:

1. :class:`RequestContextMiddleware`: request id, log context, access log,
   and the request observers: HTTP metrics (with ``enable_metrics``) and
   request metrics (when enabled). It is outermost so that every response,
   errors included, carries the id, is logged, counted and timed.
2. :class:`SecurityHeadersMiddleware`: headers on every response.
3. :class:`~app_kernel.web.cors.KernelCORSMiddleware` (Starlette's, with a
   short path without Origin): preflights and CORS headers. Outside the
   error handling, so that a 500 still carries CORS headers and a browser
   shows the problem rather than an opaque network error.
4. :class:`UnhandledErrorMiddleware`: an exception nobody handled becomes a
   500 problem (inside 1 to 3, so that answer has the id and headers too).
5. :class:`AllowedHostsMiddleware`: unknown Host headers get 400 (left out when
   ``allowed_hosts`` holds ``*``).
6. The global rate limit, when ``reliability.global_rate_limit`` is on.
7. :class:`BodyLimitMiddleware`: bodies over the limit get 413.

Inside these, added by :func:`app_kernel.app.init_app_kernel`: the
idempotency layer (POST and PATCH with an ``Idempotency-Key``), then
:class:`~app_kernel.web.head_requests.HeadRequestMiddleware` (HEAD on a GET
route answered as a GET without its body). Then FastAPI's own exception
middleware and router, whose errors (404, 405, 422, ``HTTPException``) the
kernel's handlers render as problems.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app_kernel._runtime import kernel_of_scope
from app_kernel.errors import BackendUnavailable
from app_kernel.observability.request_metrics import RequestMetricsObserver
from app_kernel.observability.request_outcome import RequestObserver
from app_kernel.reliability.ratelimit_middleware import (
    GlobalRateLimitMiddleware,
    global_limit_exemptions,
)
from app_kernel.settings import KernelSettings
from app_kernel.web.body_limit import BodyLimitMiddleware
from app_kernel.web.client_ip import ClientIpResolver
from app_kernel.web.cors import KernelCORSMiddleware
from app_kernel.web.errors import UnhandledErrorMiddleware
from app_kernel.web.hosts import AllowedHostsMiddleware
from app_kernel.web.http_metrics import HttpMetricsObserver
from app_kernel.web.problems import (
    backend_unavailable_handler,
    http_exception_handler,
    validation_exception_handler,
)
from app_kernel.web.request_context import RequestContextMiddleware, route_template
from app_kernel.web.security_headers import SecurityHeadersMiddleware

__all__ = ("install_http_layer",)

_EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy"]


def install_http_layer(app: FastAPI, settings: KernelSettings) -> None:
    """Add the kernel's middleware (in the order above) and error handlers."""
    http = settings.http
    # add_middleware puts each new one outermost, so add from the inside out.
    app.add_middleware(BodyLimitMiddleware, max_bytes=http.max_body_bytes)
    if settings.reliability.global_rate_limit:
        # Inside CORS, so a 429 carries CORS headers and preflights are never counted.
        app.add_middleware(GlobalRateLimitMiddleware, **global_limit_exemptions(app, settings))
    if "*" not in http.allowed_hosts:  # with "*" the layer would pass everything through
        app.add_middleware(AllowedHostsMiddleware, allowed_hosts=http.allowed_hosts)
    app.add_middleware(UnhandledErrorMiddleware, debug=settings.debug)
    app.add_middleware(
        KernelCORSMiddleware,
        allow_origins=list(http.cors_origins),
        allow_credentials=http.cors_allow_credentials,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=_EXPOSED_HEADERS,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    observers: list[RequestObserver] = []
    if settings.features.enable_metrics:
        observers.append(HttpMetricsObserver(metrics_path=settings.features.metrics_path))
    request_metrics = settings.observability.request_metrics
    if request_metrics.enabled:
        observers.append(
            RequestMetricsObserver(
                recorder_of=lambda scope: kernel_of_scope(scope).request_metrics,
                route_of=route_template,
                exclude_paths=request_metrics.exclude_paths,
            )
        )
    app.add_middleware(
        RequestContextMiddleware,
        client_ip=ClientIpResolver(http.trusted_proxies),
        access_log=settings.observability.access_log,
        observers=observers,
    )
    app.add_exception_handler(HTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.add_exception_handler(BackendUnavailable, backend_unavailable_handler)
