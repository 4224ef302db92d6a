"""RFC 9457 problem details: every error the kernel answers has this shape.

A problem is ``application/problem+json`` with ``type``, ``title``,
``status``, ``detail`` and the kernel's ``request_id`` extension member.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app_kernel.observability.logging import get_logger
from app_kernel.types import Scope
from app_kernel.web.allowed_methods import allowed_methods

__all__ = (
    "PROBLEM_CONTENT_TYPE",
    "ProblemResponse",
    "backend_unavailable_handler",
    "backend_unavailable_response",
    "http_exception_handler",
    "problem_response",
    "validation_exception_handler",
)

PROBLEM_CONTENT_TYPE = "application/problem+json"
_log = get_logger("app_kernel.errors")


class ProblemResponse(JSONResponse):
    """A JSON response served as ``application/problem+json``."""

    media_type = PROBLEM_CONTENT_TYPE


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    scope: Scope,
    status: int,
    *,
    detail: str | None = None,
    title: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ProblemResponse:
    """Build a problem response for the request in ``scope``.

    Args:
        scope: the ASGI scope; its request id goes into the body.
        status: the HTTP status code.
        detail: a sentence for the client about this occurrence.
        title: short summary; defaults to the status phrase.
        type_: URI naming the problem type; ``about:blank`` for plain HTTP errors.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
        extra: extension members added to the body.
    """
    state = scope.get("state") or {}
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _title(status),
        "status": status,
        "detail": detail if detail is not None else _title(status),
        "request_id": state.get("request_id"),
    }
    if extra:
        body.update(extra)
    return ProblemResponse(body, status_code=status, headers=dict(headers) if headers else None)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Render Starlette/FastAPI ``HTTPException`` (and routing 404/405) as a problem."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    extra = None if isinstance(exc.detail, str) else {"errors": exc.detail}
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    headers = exc.headers
    if exc.status_code == 405:
        allowed = allowed_methods(request.app.router.routes, request.scope)
        if allowed is not None:  # a routing 405: list what every route of the path serves
            kept = {k: v for k, v in (headers or {}).items() if k.lower() != "allow"}
            headers = {**kept, "Allow": ", ".join(allowed)}
    return problem_response(
        request.scope, exc.status_code, detail=detail, headers=headers, extra=extra
    )


async def backend_unavailable_handler(request: Request, exc: Exception) -> Response:
    """A coordination or storage backend failed: 503, so clients retry later.

    Parts that fail closed (leases, idempotency, login throttling) raise
    ``BackendUnavailable``; the cause is logged, never sent to the client.
    """
    return backend_unavailable_response(request.scope, exc)


def backend_unavailable_response(scope: Scope, exc: Exception) -> Response:
    """Log ``exc`` and answer the 503 problem for a failed backend (the cause stays
    in the log)."""
    _log.warning("backend unavailable", error=str(exc), path=scope.get("path"))
    return problem_response(
        scope,
        503,
        detail="A backend the service depends on is unavailable; try again shortly.",
        headers={"Retry-After": "1"},
    )


async def validation_exception_handler(request: Request, exc: Exception) -> Response:
    """Render request validation errors as a 422 problem.

    Each error keeps its location, message and type but not the rejected input,
    which could be a password.
    """
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}
        for error in exc.errors()
    ]
    return problem_response(
        request.scope,
        422,
        detail="The request is not valid; see errors.",
        extra={"errors": errors},
    )
