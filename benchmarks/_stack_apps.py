"""The three apps compared by ``bench_http_stack.py``, as uvicorn factories.

Each serves the same authenticated ``GET /api/v1/widgets`` answering a small
JSON object:

* ``bare_app``: FastAPI and the endpoint, nothing else (no auth);
* ``kernel_app``: ``create_service`` with auth (bearer token of a real user),
  the global rate limit on Redis, Prometheus metrics, request metrics (when the
  setting exists) and JSON logging at INFO;
* ``hand_app``: what a team assembles by hand: CORS, asgi-correlation-id,
  prometheus-fastapi-instrumentator, slowapi on Redis (its decorator on the
  endpoint) and a PyJWT dependency verifying an HS256 token.

Configuration comes from the environment the benchmark sets:
``BENCH_DATA_DIR`` (the kernel's data folder and manifest), ``BENCH_KEY_PREFIX``
(a unique Redis key prefix), ``BENCH_JWT_SECRET``, ``BENCH_REDIS_URL`` (kernel,
db 0) and ``BENCH_SLOWAPI_URL`` (slowapi, db 1).

``python benchmarks/_stack_apps.py create-user USERNAME PASSWORD`` creates the
kernel app's user in its data folder (run before the kernel's server starts).
"""

# No ``from __future__ import annotations``: FastAPI must resolve the endpoints'
# annotations, which name types local to the factories.
import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request

PATH = "/api/v1/widgets"
RATE_LIMIT = 1_000_000_000  # per 60 s: never refuses
_BODY_ITEMS = [{"id": "w1", "name": "sprocket", "size": 3}]


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        msg = f"{name} is not set (bench_http_stack.py sets it)"
        raise RuntimeError(msg)
    return value


# --- 1. bare FastAPI -------------------------------------------------------------------------


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.get(PATH)
    async def list_widgets() -> dict[str, Any]:
        return {"owner": "anonymous", "items": _BODY_ITEMS}

    return app


# --- 2. the kernel's full stack ----------------------------------------------------------------


def _write_manifest(data_dir: Path) -> Path:
    from app_kernel.settings import ObservabilitySettings

    observability: dict[str, Any] = {"log_format": "json", "log_level": "INFO"}
    if "request_metrics" in ObservabilitySettings.model_fields:
        observability["request_metrics"] = {"enabled": True}
    manifest = {
        "data_dir": str(data_dir),
        "redis": {"key_prefix": _env("BENCH_KEY_PREFIX")},
        "observability": observability,
    }
    path = data_dir / "manifest.yaml"
    import yaml

    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return path


def kernel_app() -> FastAPI:
    from app_kernel import ServiceConfig, create_service
    from app_kernel.auth import UserIdentity, get_current_user

    router = APIRouter(prefix="/widgets")
    current_user = Annotated[UserIdentity, Depends(get_current_user)]

    @router.get("")
    async def list_widgets(user: current_user) -> dict[str, Any]:
        return {"owner": user.id, "items": _BODY_ITEMS}

    data_dir = Path(_env("BENCH_DATA_DIR"))
    data_dir.mkdir(parents=True, exist_ok=True)
    config = ServiceConfig(
        jwt_secret=_env("BENCH_JWT_SECRET"),
        redis_url=_env("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        rate_limit_requests=RATE_LIMIT,
        rate_limit_window=60,
        log_level="INFO",
        debug=False,
    )
    return create_service(
        name="bench_http_stack", routers=[router], config=config, manifest=_write_manifest(data_dir)
    )


def kernel_request_metrics_enabled() -> bool | None:
    """Whether the kernel app records request metrics; None when the setting is missing."""
    from app_kernel.settings import ObservabilitySettings

    if "request_metrics" not in ObservabilitySettings.model_fields:
        return None
    return bool(kernel_app().state.app_kernel.settings.observability.request_metrics.enabled)


async def _create_user(username: str, password: str) -> None:
    app = kernel_app()
    kernel = app.state.app_kernel
    await kernel.open()
    try:
        password_hash = await kernel.auth.hasher.hash_async(password)
        await kernel.auth.create_user(username, f"{username}@example.com", password_hash)
    finally:
        await kernel.close()


# --- 3. the hand-assembled stack ---------------------------------------------------------------


def hand_app() -> FastAPI:
    import jwt
    from asgi_correlation_id import CorrelationIdMiddleware
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from prometheus_fastapi_instrumentator import Instrumentator
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    secret = _env("BENCH_JWT_SECRET")
    bearer = HTTPBearer()

    async def current_user(
        credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
    ) -> dict[str, Any]:
        try:
            return jwt.decode(credentials.credentials, secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            raise HTTPException(status_code=401, detail="invalid token") from None

    limiter = Limiter(
        key_func=get_remote_address,
        storage_uri=_env("BENCH_SLOWAPI_URL", "redis://127.0.0.1:6379/1"),
        key_prefix=_env("BENCH_KEY_PREFIX"),
    )
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.get(PATH)
    @limiter.limit(f"{RATE_LIMIT}/minute")
    async def list_widgets(
        request: Request, user: Annotated[dict[str, Any], Depends(current_user)]
    ) -> dict[str, Any]:
        return {"owner": user["sub"], "items": _BODY_ITEMS}

    Instrumentator().instrument(app).expose(app)
    app.add_middleware(CorrelationIdMiddleware)
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]
    )
    return app


def hand_token(subject: str = "bench-user") -> str:
    import time

    import jwt

    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, _env("BENCH_JWT_SECRET"), algorithm="HS256")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "create-user":
        asyncio.run(_create_user(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("usage: _stack_apps.py create-user USERNAME PASSWORD")
