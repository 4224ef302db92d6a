"""Build kernel apps with local auth for the auth HTTP and security tests, and talk to them.

Apps are built in sync fixtures (constructing the kernel hashes a dummy password,
which the event-loop guard would count against an async test); :func:`running`
then runs the lifespan and :func:`client` sends requests in-process, from a
chosen client IP.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from _app_factory import SECRET
from app_kernel import init_app_kernel
from app_kernel.auth.deps import get_current_user, get_optional_user, require_admin
from app_kernel.auth.models import UserIdentity
from app_kernel.kernel import Kernel
from app_kernel.settings import (
    AuthSettings,
    FeatureSettings,
    HttpSettings,
    KernelSettings,
    RedisSettings,
)

__all__ = (
    "ADMIN_ONLY",
    "AUTH",
    "INVALID",
    "OPTIONAL",
    "PASSWORD",
    "SECRET",
    "WHOAMI",
    "HashCalls",
    "add_user",
    "assert_problem",
    "assert_unauthorized",
    "auth_app",
    "b64url",
    "bearer",
    "client",
    "collector_paused",
    "coordination_settings",
    "forge",
    "gc_paused",
    "kernel_settings",
    "login",
    "running",
    "token_parts",
)

API_PREFIX = "/api/v1"
AUTH = f"{API_PREFIX}/auth"
"""Where :func:`auth_app` mounts the auth routes (as ``create_service`` does)."""
WHOAMI = f"{API_PREFIX}/whoami"
ADMIN_ONLY = f"{API_PREFIX}/admin-only"
OPTIONAL = f"{API_PREFIX}/optional"
PASSWORD = "correct horse battery staple"
INVALID = 'Bearer error="invalid_token"'
PROBLEM = "application/problem+json"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector off inside the block.

    These tests build dozens of apps, and FastAPI keeps their endpoints in a cache, so a
    full collection can pause the event loop longer than the root conftest's 0.1 s guard
    on a loaded machine: a GC pause, not blocking code.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.fixture(autouse=True)
def collector_paused() -> Iterator[None]:
    """:func:`gc_paused` around each test (import this autouse fixture); collection
    resumes between tests."""
    with gc_paused():
        yield


def kernel_settings(
    tmp_path: Path,
    *,
    coordination_url: str | None = None,
    key_prefix: str | None = None,
    database_url: str | None = None,
    debug: bool = True,
    features: FeatureSettings | None = None,
    http: HttpSettings | None = None,
    **auth: Any,
) -> KernelSettings:
    """Settings with cheap Argon2, no revocation cache and every file under ``tmp_path``.

    ``auth`` overrides :class:`AuthSettings` fields.
    """
    auth_values: dict[str, Any] = {
        "token_secret": SECRET,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8,
        "revocation_cache_seconds": 0,
    }
    auth_values.update(auth)
    redis = RedisSettings(url=coordination_url, key_prefix=key_prefix or "app_kernel:")
    return KernelSettings(
        debug=debug,
        data_dir=str(tmp_path),
        database_url=database_url,
        redis=redis,
        auth=AuthSettings(**auth_values),
        features=features or FeatureSettings(),
        http=http or HttpSettings(),
    )


def coordination_settings(
    request: pytest.FixtureRequest, tmp_path: Path, coordination_url: str | None, **kwargs: Any
) -> KernelSettings:
    """:func:`kernel_settings` on the ``coordination_url`` backend, Redis keys namespaced."""
    prefix = request.getfixturevalue("redis_key_prefix") if coordination_url else None
    return kernel_settings(tmp_path, coordination_url=coordination_url, key_prefix=prefix, **kwargs)


def auth_app(
    settings: KernelSettings,
    *,
    is_admin: Callable[[Mapping[str, Any]], bool] | None = None,
) -> FastAPI:
    """An app with the kernel under ``/api/v1`` and three probe routes.

    ``/api/v1/whoami`` needs a user, ``/api/v1/admin-only`` an admin, and
    ``/api/v1/optional`` answers the caller or null.
    """
    app = FastAPI(title="auth test app")

    @app.get(WHOAMI)
    async def whoami(user: Annotated[UserIdentity, Depends(get_current_user)]) -> dict[str, Any]:
        return user.to_dict()

    @app.get(ADMIN_ONLY)
    async def admin_only(user: Annotated[UserIdentity, Depends(require_admin)]) -> dict[str, Any]:
        return {"admin": user.id}

    @app.get(OPTIONAL)
    async def optional(
        user: Annotated[UserIdentity | None, Depends(get_optional_user)],
    ) -> dict[str, Any]:
        return {"user": None if user is None else user.id}

    init_app_kernel(app, settings, is_admin=is_admin, api_prefix=API_PREFIX)
    return app


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[Kernel]:
    """Run the app's lifespan (the kernel opens and closes with it); yield the kernel."""
    async with app.router.lifespan_context(app):
        kernel = app.state.app_kernel
        assert isinstance(kernel, Kernel)
        yield kernel


def client(app: FastAPI, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    """An in-process client whose requests come from ``ip``."""
    transport = httpx.ASGITransport(app=app, client=(ip, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def add_user(
    kernel: Kernel,
    username: str,
    password: str = PASSWORD,
    *,
    role: str = "user",
    email: str | None = None,
) -> dict[str, Any]:
    """Create a user through the kernel (as the CLI does); answer its record."""
    password_hash = await kernel.auth.hasher.hash_async(password)
    record = await kernel.auth.create_user(
        username,
        email if email is not None else f"{username}@example.com",
        password_hash,
        role=role,
    )
    return dict(record)


async def login(
    http: httpx.AsyncClient, username: str, password: str = PASSWORD, **headers: str
) -> dict[str, Any]:
    """Log in (JSON body); assert 200 and answer the token pair."""
    response = await http.post(
        f"{AUTH}/login", json={"username": username, "password": password}, headers=headers
    )
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


def bearer(token: str) -> dict[str, str]:
    """``Authorization: Bearer <token>``."""
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status``; answer its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "request_id"} <= body.keys()
    return body


def assert_unauthorized(response: httpx.Response, *, presented: bool = True) -> dict[str, Any]:
    """401 problem with ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` if presented)."""
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == (INVALID if presented else "Bearer")
    return body


class HashCalls:
    """Counts the kernel hasher's verify calls (real and dummy) by wrapping them."""

    def __init__(self, kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        hasher = kernel.auth.hasher
        verify, dummy = hasher.verify_async, hasher.verify_dummy_async

        async def counted_verify(password: str, hashed: str) -> bool:
            self.calls.append("verify")
            return await verify(password, hashed)

        async def counted_dummy(password: str) -> bool:
            self.calls.append("dummy")
            return await dummy(password)

        monkeypatch.setattr(hasher, "verify_async", counted_verify)
        monkeypatch.setattr(hasher, "verify_dummy_async", counted_dummy)

    def take(self) -> list[str]:
        """The calls since the last ``take``."""
        calls, self.calls = self.calls, []
        return calls


# --- forging tokens ----------------------------------------------------------------------


def b64url(data: bytes | str | Mapping[str, Any] | list[Any]) -> str:
    """Unpadded base64url of bytes, of text, or of compact JSON."""
    if isinstance(data, Mapping | list):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of a compact JWT, unverified."""
    header, payload, _ = token.split(".")

    def load(segment: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        )
        return value

    return load(header), load(payload)


def forge(
    header: Mapping[str, Any] | str,
    payload: Mapping[str, Any] | list[Any] | str,
    key: bytes | None = SECRET.encode(),
    *,
    digest: str = "sha256",
) -> str:
    """A compact JWT with an HMAC signature by ``key`` (no signature when None).

    ``header`` and ``payload`` may be raw segment text, for malformed tokens.
    """
    head = header if isinstance(header, str) else b64url(header)
    body = payload if isinstance(payload, str) else b64url(payload)
    signing_input = f"{head}.{body}".encode("ascii")
    if key is None:
        return f"{head}.{body}."
    signature = hmac.new(key, signing_input, getattr(hashlib, digest)).digest()
    return f"{head}.{body}.{b64url(signature)}"
