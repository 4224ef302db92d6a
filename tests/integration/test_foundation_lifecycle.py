"""The kernel's life on an app: start-up checks, the lifespan, shutdown and accessors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio
from fastapi import APIRouter, FastAPI
from sqlalchemy.engine import make_url

from _app_factory import SECRET, backend_settings, build_app, serve, settings_for
from _services import asyncpg_dsn
from app_kernel import (
    Kernel,
    KernelError,
    KernelNotInitialized,
    ServiceConfig,
    SettingsError,
    _runtime,
    create_service,
    init_app_kernel,
)
from app_kernel.errors import BackendUnavailable
from app_kernel.settings import AuthSettings


async def _eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds (a server notices a closed socket a moment later)."""
    try:
        async with asyncio.timeout(5):
            while True:
                if await condition():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"after 5 s: {what}")


RANDOM_32 = "Vq3xN8rT2mK9pL4wZ7bH1cJ6dF5gS0aY"
RANDOM_16_CHARS_32_BYTES = "éàüöçñøåßæœðþłńś"  # two bytes each in UTF-8


class TestSecretAtStart:
    """Outside debug mode the kernel refuses to start without a 32-byte token secret."""

    @pytest.fixture(
        params=[
            pytest.param(None, id="missing"),
            pytest.param("s" * 31, id="31-bytes"),
            pytest.param("\u00e9" * 15 + "x", id="16-chars-31-bytes"),
        ]
    )
    def insecure_app(self, request: pytest.FixtureRequest, tmp_path: Path) -> FastAPI:
        auth = AuthSettings(token_secret=request.param)
        return build_app(settings_for(tmp_path, debug=False, auth=auth))

    async def test_app_lifespan_raises(self, insecure_app: FastAPI) -> None:
        with pytest.raises(SettingsError) as caught:
            async with insecure_app.router.lifespan_context(insecure_app):
                pytest.fail("the app started")
        assert "auth.token_secret" in str(caught.value)
        assert "JWT_SECRET" in str(caught.value)
        assert "32 bytes" in str(caught.value)

    async def test_kernel_open_raises(self, insecure_app: FastAPI) -> None:
        kernel: Kernel = insecure_app.state.app_kernel
        with pytest.raises(SettingsError, match=r"auth\.token_secret"):
            await kernel.open()
        assert kernel.is_open is False

    @pytest.fixture
    def env_secret_app(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
        monkeypatch.setenv("JWT_SECRET", "too-short")
        return build_app(settings_for(tmp_path, debug=False))

    async def test_short_secret_from_env(self, env_secret_app: FastAPI) -> None:
        with pytest.raises(SettingsError, match="JWT_SECRET"):
            async with env_secret_app.router.lifespan_context(env_secret_app):
                pytest.fail("the app started")

    @pytest.fixture(
        params=[
            pytest.param({"debug": False, "auth": AuthSettings(token_secret=RANDOM_32)}, id="32"),
            pytest.param(
                {"debug": False, "auth": AuthSettings(token_secret=RANDOM_16_CHARS_32_BYTES)},
                id="16-chars-32-bytes",
            ),
            pytest.param({"debug": True}, id="debug-without-secret"),
        ]
    )
    def startable_app(self, request: pytest.FixtureRequest, tmp_path: Path) -> FastAPI:
        return build_app(settings_for(tmp_path, **request.param))

    async def test_starts(self, startable_app: FastAPI) -> None:
        async with serve(startable_app) as client:
            response = await client.get("/readyz")
        assert response.status_code == 200


@pytest.fixture
def backend_app(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    coordination_url: str | None,
    sql_database_url: str,
) -> FastAPI:
    prefix = request.getfixturevalue("redis_key_prefix") if coordination_url else None
    settings = backend_settings(
        tmp_path,
        redis_url=coordination_url,
        redis_key_prefix=prefix,
        database_url=sql_database_url,
        debug=False,
        auth=AuthSettings(token_secret=SECRET),
    )
    return build_app(settings)


def _redis_connection_gone(redis_url: str, client_id: int) -> Callable[[], Awaitable[bool]]:
    async def gone() -> bool:
        observer = redis.asyncio.Redis.from_url(redis_url)
        try:
            listing = await observer.execute_command("CLIENT", "LIST", "ID", str(client_id))
        finally:
            await observer.aclose()
        return not listing

    return gone


def _postgres_connections_gone(database_url: str) -> Callable[[], Awaitable[bool]]:
    name = make_url(database_url).database

    async def gone() -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
        finally:
            await conn.close()
        return bool(others == 0)

    return gone


async def test_shutdown_closes_every_connection(
    backend_app: FastAPI, coordination_url: str | None, sql_database_url: str
) -> None:
    kernel: Kernel = backend_app.state.app_kernel
    async with serve(backend_app) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert _runtime.current_kernel() is kernel
        pool = kernel.database.engine.pool
        assert pool.checkedin() >= 1
        redis_id = await kernel.redis.client_id() if kernel.redis is not None else None
    assert kernel.is_open is False
    # The engine was disposed: its pool closed every connection and was replaced.
    assert pool.checkedin() == 0
    assert kernel.database.engine.pool is not pool
    if sql_database_url.startswith("postgresql"):
        await _eventually(
            _postgres_connections_gone(sql_database_url), "PostgreSQL connections left open"
        )
    if coordination_url is None:
        assert kernel.sqlite is not None
        with pytest.raises(BackendUnavailable, match="not open"):
            await kernel.sqlite.ping()
    else:
        assert redis_id is not None
        gone = _redis_connection_gone(coordination_url, redis_id)
        await _eventually(gone, "the kernel's Redis connection is still open")
    with pytest.raises(KernelNotInitialized):
        _runtime.current_kernel()


@pytest.fixture
def app_with_own_lifespan(tmp_path: Path) -> tuple[FastAPI, list[tuple[str, bool]]]:
    events: list[tuple[str, bool]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append(("app start", app.state.app_kernel.is_open))
        yield
        events.append(("app stop", app.state.app_kernel.is_open))

    app = FastAPI(lifespan=lifespan)
    init_app_kernel(app, settings_for(tmp_path))
    return app, events


async def test_app_lifespan_runs_inside_the_kernels(
    app_with_own_lifespan: tuple[FastAPI, list[tuple[str, bool]]],
) -> None:
    app, events = app_with_own_lifespan
    async with serve(app) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert events == [("app start", True), ("app stop", True)]
    assert app.state.app_kernel.is_open is False


def test_init_app_kernel_twice_on_one_app_raises(tmp_path: Path) -> None:
    app = FastAPI()
    init_app_kernel(app, settings_for(tmp_path))
    with pytest.raises(KernelError, match="already called on this app"):
        init_app_kernel(app, settings_for(tmp_path))


def test_accessors_before_init_say_what_to_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "_current", None)
    with pytest.raises(KernelNotInitialized) as caught:
        _runtime.current_kernel()
    message = str(caught.value)
    assert "init_app_kernel(app, settings)" in message
    assert "create_service(" in message
    assert isinstance(caught.value, RuntimeError)
    with pytest.raises(KernelNotInitialized, match=r"init_app_kernel\(app, settings\)"):
        _runtime.kernel_of_app(FastAPI())


def test_init_makes_the_kernel_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "_current", None)
    app = FastAPI()
    kernel = init_app_kernel(app, settings_for(tmp_path))
    assert _runtime.current_kernel() is kernel
    assert _runtime.kernel_of_app(app) is kernel


@pytest.fixture
def service(tmp_path: Path) -> FastAPI:
    router = APIRouter(prefix="/widgets")

    @router.get("")
    async def list_widgets() -> list[dict[str, Any]]:
        return [{"id": "1"}]

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"data_dir: {tmp_path}\n")
    return create_service("widgets", [router], config=ServiceConfig(debug=True), manifest=manifest)


async def test_create_service_mounts_routers_under_the_api_prefix(service: FastAPI) -> None:
    async with serve(service) as client:
        assert (await client.get("/api/v1/widgets")).json() == [{"id": "1"}]
        assert (await client.get("/widgets")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
    assert service.title == "widgets"


@pytest.mark.parametrize("prefix", ["api/v1", "/api/v1/"])
def test_create_service_refuses_a_malformed_api_prefix(prefix: str) -> None:
    with pytest.raises(KernelError, match="api_prefix"):
        create_service("svc", [], config=ServiceConfig(debug=True), api_prefix=prefix)


@pytest.mark.parametrize("name", ["", "   "])
def test_create_service_refuses_an_empty_name(name: str) -> None:
    """FastAPI's own check is an assert: gone under ``python -O``, and a bare
    AssertionError otherwise."""
    with pytest.raises(KernelError, match="name: expected"):
        create_service(name, [], config=ServiceConfig(debug=True))


_FREEZE_PROBE = """
import asyncio, gc, sys, tempfile
from fastapi import FastAPI
calls = []
real_freeze = gc.freeze
gc.freeze = lambda: (calls.append(1), real_freeze())[1]
from app_kernel import init_app_kernel
from app_kernel.settings import HttpSettings, KernelSettings

async def start(freeze: bool) -> int:
    app = FastAPI()
    settings = KernelSettings(
        debug=True, data_dir=tempfile.mkdtemp(), http=HttpSettings(freeze_gc_after_start=freeze)
    )
    kernel = init_app_kernel(app, settings)
    await kernel.open()
    try:
        return gc.get_freeze_count()
    finally:
        await kernel.close()

freeze = sys.argv[1] == "on"
print(asyncio.run(start(freeze)), asyncio.run(start(freeze)), len(calls))
"""


@pytest.mark.parametrize("mode", ["on", "off"])
def test_the_first_kernel_start_freezes_the_gc_once(mode: str) -> None:
    """Start-up objects leave the collector's generations (full collections stay short)."""
    done = subprocess.run(
        [sys.executable, "-c", _FREEZE_PROBE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    frozen_first, frozen_second, freezes = (int(n) for n in done.stdout.split())
    if mode == "off":
        assert (frozen_first, frozen_second, freezes) == (0, 0, 0)
    else:
        assert frozen_first > 10_000  # the frameworks' import-time heap
        assert frozen_second > 10_000
        assert freezes == 1  # the second kernel did not freeze again


@pytest.mark.parametrize(("setting", "expected"), [(12_345, 12_345), (None, 777)])
async def test_starting_the_kernel_sets_the_young_gc_threshold(
    tmp_path: Path, setting: int | None, expected: int
) -> None:
    """The first-generation threshold is the setting's; None leaves the interpreter's."""
    import gc

    from app_kernel.settings import HttpSettings

    saved = gc.get_threshold()
    gc.set_threshold(777, 9, 8)
    try:
        app = FastAPI()
        settings = settings_for(tmp_path, http=HttpSettings(gc_threshold=setting))
        kernel = init_app_kernel(app, settings)
        await kernel.open()
        try:
            assert gc.get_threshold() == (expected, 9, 8)
        finally:
            await kernel.close()
    finally:
        gc.set_threshold(*saved)
