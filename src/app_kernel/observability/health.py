"""Liveness and readiness probes.

Liveness (``/healthz``) answers at once with no I/O: a process that can answer
is alive. Readiness (``/readyz``) runs every check concurrently, each under a
timeout, and answers 503 if any failed, raised or timed out.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse

from app_kernel.observability.logging import get_logger
from app_kernel.types import HealthCheck

__all__ = ("CheckResult", "check_name", "health_router", "run_checks")

_log = get_logger("app_kernel.health")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one readiness check."""

    name: str
    ok: bool
    message: str
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "message": self.message,
            "duration_ms": self.duration_ms,
        }


def check_name(check: Callable[..., Any]) -> str:
    """A readable name for a check: its function name, through partials."""
    while isinstance(check, functools.partial):
        check = check.func
    return str(getattr(check, "__name__", None) or type(check).__name__)


async def _run_one(name: str, check: HealthCheck, timeout_seconds: float) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_seconds):
            outcome = check()
            if not inspect.isawaitable(outcome):
                msg = "the check is not an async callable"
                raise TypeError(msg)
            result = await outcome
        if not isinstance(result, tuple) or len(result) != 2 or not isinstance(result[0], bool):
            ok, message = False, f"the check returned {result!r}, expected (ok, message)"
        else:
            ok, message = result[0], str(result[1])
    except TimeoutError:
        ok, message = False, f"timed out after {timeout_seconds:g} s"
    except Exception as exc:
        ok, message = False, f"raised {type(exc).__name__}: {exc}"
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    if not ok:
        _log.warning("readiness check failed", check=name, message=message)
    return CheckResult(name, ok, message, duration_ms)


async def run_checks(
    checks: Sequence[tuple[str, HealthCheck]], timeout_seconds: float
) -> list[CheckResult]:
    """Run ``checks`` concurrently, each bounded by ``timeout_seconds``."""
    return list(await asyncio.gather(*(_run_one(n, c, timeout_seconds) for n, c in checks)))


def health_router(
    *,
    health_path: str,
    ready_path: str,
    checks: Callable[[], Sequence[tuple[str, HealthCheck]]],
    timeout_seconds: float,
) -> APIRouter:
    """Routes for the liveness and readiness probes.

    Load balancers and uptime monitors that probe with HEAD get the GET's
    answer without its body, as on every GET route of a kernel app (see
    :mod:`app_kernel.web.head_requests`).
    """
    router = APIRouter(tags=["health"])

    @router.get(health_path, summary="Liveness probe")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(ready_path, summary="Readiness probe")
    async def readyz() -> JSONResponse:
        results = await run_checks(checks(), timeout_seconds)
        ready = all(r.ok for r in results)
        body = {"status": "ok" if ready else "fail", "checks": [r.to_dict() for r in results]}
        return JSONResponse(body, status_code=200 if ready else 503)

    return router
