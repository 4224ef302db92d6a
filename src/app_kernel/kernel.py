"""The composition root: the one place settings become wired objects.

:class:`Kernel` builds, from frozen settings, the database, the coordination
backend (Redis when ``redis.url`` is set, the embedded SQLite file otherwise)
and everything later areas hang on them. The API (``app.py``) and the worker
and CLI (``cli.py``) all build their kernel here. Areas never import each
other; where one needs another, this module hands it a callable.
"""

from __future__ import annotations

import gc
import secrets
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from app_kernel._redis.client import close_redis, create_redis_client
from app_kernel._redis.keys import RedisKeys
from app_kernel._runtime import clear_current
from app_kernel._sqlite.store import SqliteStore
from app_kernel.auth.apikeys import ApiKeyStore
from app_kernel.auth.deps import identify_request
from app_kernel.auth.models import UserIdentity
from app_kernel.auth.passwords import OWASP_MEMORY_KIB, OWASP_TIME_COST, PasswordHasher
from app_kernel.auth.secret_strength import MIN_SECRET_BYTES, secret_weakness
from app_kernel.auth.service import AuthService
from app_kernel.auth.sql_store import SqlUserStore
from app_kernel.auth.state.base import AuthStateBackend
from app_kernel.auth.state.sqlite import SqliteAuthState
from app_kernel.auth.tokens import TokenCodec
from app_kernel.db.engine import Database
from app_kernel.errors import SettingsError
from app_kernel.jobs.backends.base import JobQueue
from app_kernel.jobs.backends.sqlite import SqliteJobQueue
from app_kernel.jobs.client import JobClient
from app_kernel.jobs.registry import kernel_tasks
from app_kernel.observability.audit import AuditLogger, SqlAuditStore
from app_kernel.observability.health import check_name
from app_kernel.observability.logging import configure_logging, get_logger
from app_kernel.observability.metrics import Metrics
from app_kernel.observability.prometheus import PrometheusBackend
from app_kernel.observability.request_metrics import BATCH_PRIORITY, RequestMetricsRecorder
from app_kernel.observability.request_metrics_store import (
    STORE_TASK,
    bind_database,
    store_batch_task,
    unbind_database,
)
from app_kernel.reliability.backends.idempotency_base import IdempotencyBackend
from app_kernel.reliability.backends.sqlite_idempotency import SqliteIdempotency
from app_kernel.reliability.backends.sqlite_ratelimit import SqliteRateLimitBackend
from app_kernel.reliability.idempotency import Idempotency
from app_kernel.reliability.ratelimit import RateLimiter
from app_kernel.settings import KernelSettings
from app_kernel.streaming.backends.base import LeaseBackend
from app_kernel.streaming.backends.sqlite import SqliteLeaseBackend
from app_kernel.streaming.leases import StreamLeaseLimiter
from app_kernel.types import HealthCheck

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from starlette.requests import Request

__all__ = ("MIN_SECRET_BYTES", "Kernel", "check_startup_settings")

_MAKE_ONE = "for example from: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
_log = get_logger("app_kernel.kernel")
_gc_frozen = False


def _freeze_gc_once() -> None:
    """``gc.freeze()`` when the first kernel of this process starts.

    Only once: a second app (tests make hundreds) would otherwise pin its own
    start-up garbage for good.
    """
    global _gc_frozen
    if not _gc_frozen:
        _gc_frozen = True
        gc.freeze()


if STORE_TASK not in kernel_tasks:
    kernel_tasks.register(
        STORE_TASK, store_batch_task, timeout=60, max_attempts=3, description="request metrics"
    )


def check_startup_settings(settings: KernelSettings) -> None:
    """Checks made when the kernel starts rather than when settings are built.

    Raises:
        SettingsError: outside debug mode, the token secret (or a retired HS256
            secret in ``auth.previous_keys``) is missing, shorter than 32 bytes or
            plainly not random (see :func:`~app_kernel.auth.secret_strength.secret_weakness`).
            The spec's examples build settings with placeholder secrets, so this
            waits for start-up.
    """
    if settings.debug or settings.features.auth_mode == "external":
        return
    secret = settings.auth.token_secret
    if not secret:
        msg = (
            "auth.token_secret (env JWT_SECRET) is not set: outside debug mode the kernel "
            f"needs a random secret of at least {MIN_SECRET_BYTES} bytes, {_MAKE_ONE}"
        )
        raise SettingsError(msg)
    named = [("auth.token_secret (env JWT_SECRET)", secret)]
    if settings.auth.algorithm == "HS256":
        named += [
            (f"auth.previous_keys[{kid!r}]", old)
            for kid, old in settings.auth.previous_keys.items()
        ]
    for name, value in named:
        weakness = secret_weakness(value)
        if weakness is not None:
            msg = f"{name} {weakness}: outside debug mode use a random secret, {_MAKE_ONE}"
            raise SettingsError(msg)


class Kernel:
    """Everything the kernel wired from one :class:`KernelSettings`.

    Building it does no I/O; :meth:`open` connects and :meth:`close` releases
    every connection. One kernel serves one API app or one worker process.
    """

    def __init__(
        self,
        settings: KernelSettings,
        registry: Any = None,
        *,
        user_store: Any = None,
        is_admin: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.user_store = user_store
        self.is_admin = is_admin
        self.database = Database(settings.resolved_database_url)
        observability = settings.observability
        self.metrics = Metrics(
            PrometheusBackend(observability.prometheus_multiproc_dir),
            prefix=observability.metrics_prefix,
            max_series_per_metric=observability.metrics_max_series_per_metric,
        )
        self.redis: Redis | None = None
        self.sqlite: SqliteStore | None = None
        auth_state: AuthStateBackend
        lease_backend: LeaseBackend
        if settings.redis.url:
            # First: without the optional ``redis`` extra this raises an error
            # naming it. The Redis backends are imported here for the same reason.
            self.redis = create_redis_client(settings.redis)
            from app_kernel.auth.state.redis import RedisAuthState
            from app_kernel.jobs.backends.redis import RedisJobQueue
            from app_kernel.reliability.backends.redis_idempotency import RedisIdempotency
            from app_kernel.reliability.backends.redis_ratelimit import RedisRateLimitBackend
            from app_kernel.streaming.backends.redis import RedisLeaseBackend

            self.redis_keys = RedisKeys(settings.redis.key_prefix)
            auth_state = RedisAuthState(self.redis, self.redis_keys)
            self.rate_limiter = RateLimiter(
                RedisRateLimitBackend(self.redis, self.redis_keys), settings.reliability
            )
            idempotency_backend: IdempotencyBackend = RedisIdempotency(self.redis, self.redis_keys)
            lease_backend = RedisLeaseBackend(self.redis, self.redis_keys)
            self.job_queue: JobQueue = RedisJobQueue(self.redis, self.redis_keys)
        else:
            self.sqlite = SqliteStore(settings.coordination_path)
            auth_state = SqliteAuthState(self.sqlite)
            self.rate_limiter = RateLimiter(
                SqliteRateLimitBackend(self.sqlite), settings.reliability
            )
            idempotency_backend = SqliteIdempotency(self.sqlite)
            lease_backend = SqliteLeaseBackend(self.sqlite)
            self.job_queue = SqliteJobQueue(self.sqlite)
        self.stream_leases = StreamLeaseLimiter(lease_backend, settings.streaming)
        self.stream_leases.metrics = self.rate_limiter.metrics = self.metrics
        self.idempotency = Idempotency(idempotency_backend, settings.reliability)
        self.jobs = JobClient(self.job_queue, settings.jobs, registry, metrics=self.metrics)
        self.audit = AuditLogger(SqlAuditStore(self.database))
        self.request_metrics = RequestMetricsRecorder(
            observability.request_metrics,
            self.metrics,
            enqueue=lambda payload: self.jobs.enqueue(STORE_TASK, payload, priority=BATCH_PRIORITY),
            backlog=self._request_metrics_backlog,
            cancel=self._cancel_waiting_batch,
        )
        self.auth = self._build_auth(auth_state)
        self._exit_stack: AsyncExitStack | None = None
        self.is_open = False

    def _build_auth(self, state: AuthStateBackend) -> AuthService:
        settings = self.settings
        # Without a configured secret, a random one stands in so that building the
        # kernel never fails; open() refuses to start outside debug mode.
        self.token_secret = settings.auth.token_secret or secrets.token_urlsafe(48)
        oidc = None
        if settings.features.auth_mode == "external":
            from app_kernel.auth.external import OidcVerifier

            oidc = OidcVerifier.from_settings(settings.auth)
        sql_users = SqlUserStore(self.database)
        return AuthService(
            settings=settings.auth,
            features=settings.features,
            codec=TokenCodec.from_settings(settings.auth, self.token_secret),
            hasher=PasswordHasher.from_settings(settings.auth),
            users=self.user_store if self.user_store is not None else sql_users,
            state=state,
            api_keys=ApiKeyStore(
                self.database, cache_seconds=settings.auth.revocation_cache_seconds
            ),
            audit=self._audit_and_count,
            is_admin=self.is_admin,
            oidc=oidc,
            sql_users=sql_users,
        )

    async def _audit_and_count(
        self, action: str, status: str = "success", *args: Any, **kwargs: Any
    ) -> Any:
        """The auth area's audit hook: also counts ``auth_events_total{action,status}``
        (logins ok/failed, refresh-token reuse, logouts, key changes)."""
        self.metrics.increment("auth.events", tags={"action": action, "status": status})
        return await self.audit.log(action, status, *args, **kwargs)

    async def optional_user(self, request: Request) -> UserIdentity | None:
        """The caller of ``request`` or None, resolved once per request.

        Areas that must not import auth (rate limits keyed by user, idempotency
        scoped to the caller) reach the caller through this.
        """
        return await identify_request(request)

    @property
    def backend_name(self) -> str:
        """``redis`` or ``sqlite``: where cross-process coordination lives."""
        return "redis" if self.redis is not None else "sqlite"

    async def open(self) -> None:
        """Check start-up settings, configure logging, connect and create tables."""
        settings = self.settings
        check_startup_settings(settings)
        fmt = settings.observability.log_format
        if fmt == "auto":
            fmt = "console" if settings.debug else "json"
        configure_logging(
            level=settings.observability.log_level,
            fmt=fmt,
            service_name=settings.observability.service_name,
        )
        auth = settings.auth
        if not settings.debug and (
            auth.argon2_time_cost < OWASP_TIME_COST or auth.argon2_memory_kib < OWASP_MEMORY_KIB
        ):
            _log.warning(
                "argon2 parameters are below the OWASP minimum (t=2, m=19456 KiB)",
                time_cost=auth.argon2_time_cost,
                memory_kib=auth.argon2_memory_kib,
            )
        if settings.debug and not settings.auth.token_secret:
            _log.warning(
                "debug mode without JWT_SECRET: tokens are signed with a random key "
                "and stop working when the process restarts"
            )
        stack = AsyncExitStack()
        try:
            await self.auth.hasher.warm()
            await self.database.open()
            stack.push_async_callback(self.database.close)
            if self.sqlite is not None:
                await self.sqlite.open()
                stack.push_async_callback(self.sqlite.close)
            if self.redis is not None:
                stack.push_async_callback(close_redis, self.redis)
            stack.push_async_callback(self.auth.aclose)
            stack.push_async_callback(unbind_database, bind_database(self.database))
            if settings.observability.request_metrics.enabled:
                self.request_metrics.start()
                stack.push_async_callback(self.request_metrics.stop)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        self.is_open = True
        if settings.http.freeze_gc_after_start:
            _freeze_gc_once()
        if settings.http.gc_threshold is not None:
            _, older, oldest = gc.get_threshold()
            gc.set_threshold(settings.http.gc_threshold, older, oldest)
        _log.info(
            "kernel started",
            backend=self.backend_name,
            database=self.database.url.get_backend_name(),
        )

    async def close(self) -> None:
        """Release every connection opened by :meth:`open`, in reverse order."""
        stack, self._exit_stack = self._exit_stack, None
        self.is_open = False
        if stack is not None:
            await stack.aclose()
        self.metrics.close()
        clear_current(self)

    async def _cancel_waiting_batch(self, job_id: str) -> bool:
        """Cancel a request-metrics batch only while it waits (never a running store).

        One backend call, which decides atomically; it never reads the batch.
        """
        return await self.job_queue.cancel(job_id, waiting_only=True)

    async def _request_metrics_backlog(self) -> int:
        status = await self.job_queue.status()
        return int(status["queues"][BATCH_PRIORITY])

    async def _check_database(self) -> tuple[bool, str]:
        await self.database.ping()
        return True, f"{self.database.url.get_backend_name()} answered"

    async def _check_coordination(self) -> tuple[bool, str]:
        if self.redis is not None:
            await self.redis.ping()
            return True, "redis answered"
        assert self.sqlite is not None
        await self.sqlite.ping()
        return True, "embedded store answered"

    def readiness_checks(self) -> list[tuple[str, HealthCheck]]:
        """The built-in checks, then the app's, with unique names."""
        checks: list[tuple[str, HealthCheck]] = [
            ("database", self._check_database),
            (self.backend_name, self._check_coordination),
        ]
        seen = {name for name, _ in checks}
        for check in self.settings.health_checks:
            name = base = check_name(check)
            number = 2
            while name in seen:
                name, number = f"{base}#{number}", number + 1
            seen.add(name)
            checks.append((name, check))
        return [(name, self._metered_check(name, check)) for name, check in checks]

    def _metered_check(self, name: str, check: HealthCheck) -> HealthCheck:
        """``check`` setting ``readiness_check_ok{check=name}`` to 1 or 0 on each run."""

        async def metered() -> tuple[bool, str]:
            ok = False
            try:
                ok, message = await check()
                return ok, message
            finally:
                self.metrics.gauge(
                    "readiness.check_ok", 1 if ok else 0, {"check": name}, mode="livemostrecent"
                )

        metered.__name__ = getattr(check, "__name__", name)
        return metered
