"""Root test rig: real Redis/PostgreSQL, a clean environment and an event-loop guard.

Servers come from ``APP_KERNEL_TEST_REDIS_URL`` / ``APP_KERNEL_TEST_DATABASE_URL`` when
set, else from throwaway ``redis-server`` / ``initdb``+``pg_ctl`` processes. Without
either the dependent tests skip, unless ``APP_KERNEL_TEST_REQUIRE_SERVICES=1`` (set in CI)
turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio

from _loop_guard import SLOW_CALLBACK_SECONDS, detect_blocking
from _services import (
    create_database,
    delete_keys_with_prefix,
    drop_database,
    find_postgres_binaries,
    postgres_error,
    postgres_run_prefix,
    redis_ping,
    sqlalchemy_postgres_url,
    throwaway_postgres,
    throwaway_redis,
    with_database,
)

REDIS_ENV = "APP_KERNEL_TEST_REDIS_URL"
POSTGRES_ENV = "APP_KERNEL_TEST_DATABASE_URL"
REQUIRE_ENV = "APP_KERNEL_TEST_REQUIRE_SERVICES"

# The library reads these; a developer's shell must not change test results.
LIBRARY_ENV_VARS = (
    "REDIS_URL",
    "DATABASE_URL",
    "JWT_SECRET",
    "DEBUG",
    "LOG_LEVEL",
    "CORS_ORIGINS",
    "RATE_LIMIT_REQUESTS",
    "RATE_LIMIT_WINDOW",
    "ALLOW_SELF_SIGNUP",
    "JWT_EXPIRY_HOURS",
    "PROMETHEUS_MULTIPROC_DIR",
)
LIBRARY_ENV_PREFIX = "KERNEL_"

_REDIS_FIXTURES = frozenset({"redis_url", "redis_key_prefix"})
_POSTGRES_FIXTURES = frozenset({"postgres_url", "pg_database_url"})
_LoopScope = Literal["function", "class", "module", "package", "session"]
_LOOP_SCOPES: tuple[_LoopScope, ...] = ("function", "class", "module", "package", "session")


# --- markers ---------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection looks at the markers
def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything imported so far out of the garbage collector's reach.

    A full collection over the imported heap can pause a test for 0.2 s on a
    loaded 2-core machine, which the event-loop guard would report as the
    test blocking the loop.
    """
    del session
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use the Redis / PostgreSQL fixtures with ``redis`` / ``postgres``."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _REDIS_FIXTURES and not item.get_closest_marker("redis"):
            item.add_marker(pytest.mark.redis)
        if names & _POSTGRES_FIXTURES and not item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)


# --- environment -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_library_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the library's own env switches (and every ``KERNEL_*``) for each test."""
    kernel_vars = [name for name in os.environ if name.startswith(LIBRARY_ENV_PREFIX)]
    for name in (*LIBRARY_ENV_VARS, *kernel_vars):
        monkeypatch.delenv(name, raising=False)


def _require_services() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for failure messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _unavailable(reason: str) -> NoReturn:
    """Skip loudly, or fail when ``APP_KERNEL_TEST_REQUIRE_SERVICES=1``."""
    if _require_services():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


# --- Redis -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (``redis://host:port/db``) of a real Redis server, shared by the session.

    ``$APP_KERNEL_TEST_REDIS_URL`` if set (must answer PING), else a throwaway
    ``redis-server`` on a free port, else skip (fail under ``REQUIRE_SERVICES``).
    Tests sharing it must namespace their keys; see ``redis_key_prefix``.
    """
    configured = os.environ.get(REDIS_ENV)
    if configured:
        if not redis_ping(configured):
            pytest.fail(f"{REDIS_ENV}={_redact(configured)} does not answer PING", pytrace=False)
        yield configured
        return
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable(f"NO REDIS: set {REDIS_ENV}=redis://127.0.0.1:6379/0 or install redis-server")
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_redis(binary, tmp_path_factory.mktemp("redis")))
        except RuntimeError as exc:
            _unavailable(f"NO REDIS: could not start redis-server ({exc}); set {REDIS_ENV}")
        yield url


@pytest.fixture
def redis_key_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix such as ``t1f2e3d4c5b6a:``; its keys are deleted after the test."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_keys_with_prefix(redis_url, prefix)


# --- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+asyncpg://`` URL of a real PostgreSQL server, shared by the session.

    ``$APP_KERNEL_TEST_DATABASE_URL`` if set (``postgresql://`` is accepted and
    converted), else a throwaway cluster made with ``initdb``/``pg_ctl`` (through
    ``runuser -u postgres`` when running as root), else skip (fail under
    ``REQUIRE_SERVICES``). Tests wanting isolation should use ``pg_database_url``.
    """
    configured = os.environ.get(POSTGRES_ENV)
    if configured:
        try:
            url = sqlalchemy_postgres_url(configured)
        except ValueError as exc:
            pytest.fail(f"{POSTGRES_ENV}: {exc}", pytrace=False)
        error = postgres_error(url)
        if error is not None:
            reason = f"{POSTGRES_ENV}={_redact(configured)} is unreachable: {error}"
            pytest.fail(reason, pytrace=False)
        yield url
        return
    hint = f"set {POSTGRES_ENV}=postgresql://postgres@127.0.0.1:5432/test"
    bins = find_postgres_binaries()
    if bins is None:
        _unavailable(f"NO POSTGRESQL: {hint} or install initdb/pg_ctl")
    prefix = postgres_run_prefix()
    if prefix is None:
        _unavailable(f"NO POSTGRESQL: running as root without runuser/postgres user; {hint}")
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_postgres(bins, prefix))
        except (RuntimeError, OSError) as exc:
            _unavailable(f"NO POSTGRESQL: could not start a throwaway cluster ({exc}); {hint}")
        error = postgres_error(url)
        if error is not None:
            _unavailable(f"NO POSTGRESQL: throwaway cluster not reachable ({error}); {hint}")
        yield url


@pytest.fixture
def pg_database_url(postgres_url: str) -> Iterator[str]:
    """``postgresql+asyncpg://`` URL of a fresh, empty ``ak_test_<hex>`` database.

    Dropped ``WITH (FORCE)`` after the test, so leftover connections cannot block it.
    """
    name = f"ak_test_{uuid.uuid4().hex[:16]}"
    create_database(postgres_url, name)
    try:
        yield with_database(postgres_url, name)
    finally:
        drop_database(postgres_url, name)


# --- backend matrices for contract tests -----------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def coordination_url(request: pytest.FixtureRequest) -> str | None:
    """Coordination backend: ``None`` (embedded SQLite) or a real Redis URL.

    Redis is only started for the ``redis`` param. Redis tests should also namespace
    their keys (``redis_key_prefix``).
    """
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def sql_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQL database: ``sqlite+aiosqlite:///<tmp_path>/app.db`` or a fresh PostgreSQL DB."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_database_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


# --- event-loop blocking guard ---------------------------------------------------------


def _make_loop_guard(loop_scope: _LoopScope) -> Callable[..., Any]:
    @pytest_asyncio.fixture(loop_scope=loop_scope, name=f"_loop_guard_{loop_scope}")
    async def guard() -> AsyncIterator[None]:
        # The cyclic collector is paused for the test: a full collection over the
        # suite's heap (FastAPI caches every app's endpoints) can take 0.2 s on a
        # loaded 2-core machine, and that pause is not the code blocking the loop.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            with detect_blocking(asyncio.get_running_loop()) as reports:
                yield
        finally:
            if was_enabled:
                gc.enable()
        if reports:
            listing = "\n  ".join(reports)
            pytest.fail(
                f"the event loop was blocked: {len(reports)} callback(s) ran longer than "
                f"{SLOW_CALLBACK_SECONDS}s:\n  {listing}\n"
                "Move blocking work off the loop (e.g. asyncio.to_thread) or mark the test "
                "@pytest.mark.allow_slow_callbacks.",
                pytrace=False,
            )

    return guard


for _scope in _LOOP_SCOPES:
    globals()[f"_loop_guard_{_scope}"] = _make_loop_guard(_scope)


def _test_loop_scope(item: pytest.Item) -> str:
    marker = item.get_closest_marker("asyncio")
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope") if marker else None
    default = item.config.getini("asyncio_default_test_loop_scope") or "function"
    return str(scope or default)


@pytest.fixture(autouse=True)
def _event_loop_blocking_guard(request: pytest.FixtureRequest) -> None:
    """Async tests only: run in asyncio debug mode and fail if a callback blocked the loop.

    Any single step taking longer than ``SLOW_CALLBACK_SECONDS`` fails the test at
    teardown. Opt out with ``@pytest.mark.allow_slow_callbacks``. Sync tests are left
    alone and get no event loop.
    """
    item = request.node
    if not pytest_asyncio.is_async_test(item) or item.get_closest_marker("allow_slow_callbacks"):
        return
    request.getfixturevalue(f"_loop_guard_{_test_loop_scope(item)}")
