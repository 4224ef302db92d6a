"""Frozen configuration for the kernel.

Every settings object is immutable: assigning to a field raises. Values are
validated when the object is built, and errors name the field and the form
expected (:class:`~app_kernel.errors.SettingsError`).

Where a value comes from, highest first:

1. arguments passed explicitly to the constructor;
2. environment variables (``REDIS_URL``, ``DATABASE_URL``, ``JWT_SECRET``,
   ``LOG_LEVEL``, ``DEBUG`` and the ``KERNEL_*`` feature flags), for fields
   not passed explicitly;
3. a ``manifest.yaml`` (:meth:`KernelSettings.from_manifest`);
4. the defaults documented on each field.

Nothing here does I/O beyond reading the environment and the manifest file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app_kernel._config.env import (
    env_value,
    parse_bool,
    parse_choice,
    parse_str,
    signup_from_env,
)
from app_kernel.errors import SettingsError
from app_kernel.types import HealthCheck

__all__ = (
    "AuthSettings",
    "FeatureSettings",
    "HttpSettings",
    "JobSettings",
    "KernelSettings",
    "ObservabilitySettings",
    "RedisSettings",
    "ReliabilitySettings",
    "RequestMetricsSettings",
    "StreamingSettings",
)

T = TypeVar("T")
_HOST = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\]")
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s@]+")
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
UNIX_PEER = "unix"
"""The ``http.trusted_proxies`` entry for a proxy connected over a Unix socket."""


def _from_env(var: str, parser: Callable[[str, str], T], default: T) -> Any:
    """A field whose default is read from ``var`` when the field is not passed."""

    def factory() -> T:
        value = env_value(var, parser)
        return default if value is None else value

    # validate_default: a value read from the environment is checked (and
    # normalised) like one passed explicitly.
    return Field(default_factory=factory, validate_default=True, json_schema_extra={"env": var})


def _describe(section: str, exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        name = f"{section}.{loc}" if section and loc else section or loc
        message = error["msg"].removeprefix("Value error, ")
        if message.startswith((f"{name}.", f"{name}:")):
            # A nested section already named itself from the root.
            lines.append(message)
            continue
        var = _env_var(model, error["loc"])
        if var is not None and var not in message:
            name = f"{name} (env {var})"  # the user may have set only the variable
        message = message.replace("Input should be", "expected").replace("a valid tuple", "a list")
        if error["type"] != "value_error" and not _is_secret_loc(error["loc"]):
            message = f"{message}, got {error['input']!r}"
        lines.append(f"{name}: {message}")
    return "; ".join(lines)


def _env_var(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str | None:
    """The environment variable the field at ``loc`` (nested sections followed) is
    read from, if any."""
    field = None
    for part in loc:
        if model is None:
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            model = None
    extra = field.json_schema_extra if field is not None else None
    var = extra.get("env") if isinstance(extra, dict) else None
    return var if isinstance(var, str) else None


def _is_secret_loc(loc: tuple[int | str, ...]) -> bool:
    return any(str(part) in _SECRET_FIELDS for part in loc)


_SECRET_FIELDS = frozenset({"token_secret", "private_key", "previous_keys"})


class _Settings(BaseModel):
    """Shared behaviour: frozen, no unknown fields, errors as SettingsError."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    section: ClassVar[str] = ""

    if not TYPE_CHECKING:
        # Hidden from type checkers so the pydantic plugin keeps the typed signature.
        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise SettingsError(_describe(self.section, exc, type(self))) from None


class RedisSettings(_Settings):
    """Redis connection. With no ``url`` the kernel coordinates through embedded SQLite."""

    section: ClassVar[str] = "redis"

    url: str | None = _from_env("REDIS_URL", parse_str, None)
    """``redis://``, ``rediss://`` or ``unix://`` URL; env ``REDIS_URL``. Default: None."""
    key_prefix: str = "app_kernel:"
    """Prepended to every key the kernel writes. Braces are refused: they would
    change the Redis Cluster hash slot of the kernel's keys."""
    max_connections: int = Field(default=64, gt=0)
    """Size of the shared connection pool."""
    socket_timeout_seconds: float = Field(default=5.0, gt=0)
    """Connect and read timeout of ordinary commands."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        expected = "expected a redis://, rediss:// or unix:// URL"
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            msg = f"{expected}, got {_hide_password(value)!r}"
            raise ValueError(msg)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme != "unix" and (not parts.hostname or port == -1):
            msg = f"{expected} with a host and a numeric port, got {_hide_password(value)!r}"
            raise ValueError(msg)
        if parts.scheme == "unix" and not parts.path:
            msg = f"{expected}; a unix:// URL needs a socket path, got {_hide_password(value)!r}"
            raise ValueError(msg)
        if parts.scheme != "unix" and not _REDIS_DB_PATH.fullmatch(parts.path):
            # redis-py would ignore such a path and use database 0.
            msg = (
                f"{expected} whose path is a database number (redis://host:6379/0), "
                f"got {_hide_password(value)!r}"
            )
            raise ValueError(msg)
        problem = _redis_options_problem(value)
        if problem is not None:
            msg = (
                f"{expected} whose options redis-py accepts ({problem}), "
                f"got {_hide_password(value)!r}"
            )
            raise ValueError(msg)
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if "{" in value or "}" in value:
            msg = (
                "expected a prefix without '{' or '}' (they set Redis Cluster hash tags), "
                f"got {value!r}"
            )
            raise ValueError(msg)
        if len(value) > 64:
            msg = f"expected at most 64 characters, got {len(value)}"
            raise ValueError(msg)
        return value


_REDIS_DB_PATH = re.compile(r"/?|/[0-9]+")


def _redis_options_problem(url: str) -> str | None:
    """What redis-py finds wrong in the URL's options (``?socket_timeout=abc``,
    ``?no_such_option=1``), or None; None too without the ``redis`` package."""
    try:
        from redis.asyncio.connection import ConnectionPool
        from redis.exceptions import RedisError
    except ImportError:
        return None
    try:
        ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]  # no I/O
    except (TypeError, ValueError, RedisError) as exc:  # ?ssl_cert_reqs=bogus, ?protocol=9
        return str(exc)
    return None


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class AuthSettings(_Settings):
    """Token signing and lifetimes."""

    section: ClassVar[str] = "auth"

    token_secret: str | None = Field(
        default_factory=lambda: env_value("JWT_SECRET", parse_str),
        repr=False,
        json_schema_extra={"env": "JWT_SECRET", "secret": True},
    )
    """HMAC key for the kernel's tokens; env ``JWT_SECRET``. Checked at start-up,
    not here: outside debug mode it must be present, at least 32 bytes and not
    plainly patterned (one character, or a phrase typed over and over)."""
    access_token_expires_minutes: int = Field(default=15, gt=0)
    """Lifetime of an access token."""
    refresh_token_expires_days: int = Field(default=30, gt=0)
    """Lifetime of one refresh token; each refresh issues a new one."""
    refresh_family_max_days: int = Field(default=90, gt=0)
    """Absolute lifetime of a login: no refresh extends a token family past it."""
    issuer: str = "app_kernel"
    """``iss`` of the kernel's tokens; tokens with another issuer are refused."""
    audience: str = "app_kernel"
    """``aud`` of the kernel's tokens; tokens for another audience are refused."""
    algorithm: Literal["HS256", "EdDSA", "ES256"] = "HS256"
    """Signing algorithm. HS256 uses ``token_secret``; EdDSA and ES256 use the key
    pair below. No other algorithm is ever accepted."""
    private_key: str | None = Field(default=None, repr=False, json_schema_extra={"secret": True})
    """PEM private key for EdDSA or ES256."""
    public_key: str | None = None
    """PEM public key for EdDSA or ES256."""
    key_id: str = "k1"
    """``kid`` header of tokens signed with the current key."""
    previous_keys: Mapping[str, str] = Field(
        default_factory=dict, repr=False, json_schema_extra={"secret": True}
    )
    """Retired keys by ``kid`` (HS256 secrets, or PEM public keys for EdDSA and
    ES256): tokens they signed stay valid until they expire; nothing new is
    signed with them."""
    leeway_seconds: int = Field(default=10, ge=0, le=30)
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``; at most 30 s."""
    max_token_bytes: int = Field(default=8192, ge=1024, le=65536)
    """Tokens longer than this are refused before any decoding."""
    argon2_time_cost: int = Field(default=2, ge=1)
    """Argon2id iterations (OWASP: 2 with 19 MiB)."""
    argon2_memory_kib: int = Field(default=19456, ge=8)
    """Argon2id memory in KiB (OWASP: 19456)."""
    argon2_parallelism: int = Field(default=1, ge=1)
    """Argon2id lanes (OWASP: 1)."""
    hash_concurrency: int = Field(default=4, ge=1)
    """Password hashes computed at once per process; bounds memory under a login storm."""
    password_min_length: int = Field(default=8, ge=8)
    """Shortest password accepted."""
    password_max_length: int = Field(default=256, ge=64, le=4096)
    """Longest password accepted; longer ones are refused before hashing."""
    login_max_failures_per_user: int = Field(default=5, gt=0)
    """Failed logins allowed per username within the window before 429."""
    login_max_failures_per_ip: int = Field(default=20, gt=0)
    """Failed logins allowed per client IP within the window before 429."""
    login_failure_window_seconds: int = Field(default=900, gt=0)
    """Window of the failed-login counters."""
    revocation_cache_seconds: float = Field(default=1.0, ge=0, le=1.0)
    """How long a process may reuse a user's revocation state; at most 1 s."""
    oidc_issuer: str | None = None
    """External mode: the OpenID Connect issuer whose tokens are accepted."""
    oidc_jwks_url: str | None = None
    """External mode: the issuer's JWKS URL."""
    oidc_audience: str | None = None
    """External mode: the ``aud`` the tokens must carry."""
    oidc_role_claim: str = "role"
    """External mode: the claim (a string or a list) holding the user's role;
    ``admin`` in it makes the user an admin."""
    oidc_algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    """External mode: signature algorithms accepted from the issuer."""
    oidc_jwks_cache_seconds: int = Field(default=600, gt=0)
    """External mode: how long fetched keys are reused."""

    @field_validator("previous_keys")
    @classmethod
    def _freeze_keys(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        return MappingProxyType(dict(value))

    @field_validator("oidc_algorithms")
    @classmethod
    def _check_oidc_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}
        bad = [alg for alg in value if alg not in allowed]
        if bad or not value:
            msg = f"expected asymmetric algorithms from {sorted(allowed)}, got {list(value)!r}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> AuthSettings:
        if self.algorithm != "HS256" and not (self.private_key and self.public_key):
            msg = f"algorithm {self.algorithm} needs private_key and public_key (PEM)"
            raise ValueError(msg)
        if self.password_max_length < self.password_min_length:
            msg = "password_max_length is below password_min_length"
            raise ValueError(msg)
        return self


class JobSettings(_Settings):
    """Background job execution."""

    section: ClassVar[str] = "jobs"

    worker_count: int = Field(default=4, gt=0)
    """Jobs one worker process runs at once."""
    thread_pool_size: int = Field(default=8, gt=0)
    """Threads for handlers written as plain functions."""
    max_attempts: int = Field(default=3, gt=0)
    """Attempts for a job whose enqueue call and task metadata name none."""
    default_timeout_seconds: float = Field(default=300.0, gt=0)
    """Run-time limit of a job whose enqueue call and task metadata name none."""
    lease_seconds: float = Field(default=30.0, gt=0)
    """A running job's lease; a worker that stops heartbeating loses its jobs after this."""
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    """How often a worker renews its leases (from its own thread); below the lease."""
    reap_interval_seconds: float = Field(default=5.0, gt=0)
    """How often a worker looks for expired leases of dead workers."""
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long running jobs may finish before they are handed back."""
    priority_weights: tuple[int, int, int] = (6, 3, 1)
    """Picks per round for high, normal and low; low is never starved."""
    strict_priority: bool = False
    """Always drain high before normal before low (low may starve)."""
    retry_backoff_base_seconds: float = Field(default=1.0, ge=0)
    """First retry waits up to this long; each later one doubles it (with jitter)."""
    retry_backoff_cap_seconds: float = Field(default=300.0, ge=0)
    """Longest wait between attempts."""
    max_payload_bytes: int = Field(default=1_048_576, gt=0)
    """Largest JSON payload accepted at enqueue."""
    result_ttl_seconds: float = Field(default=86_400.0, gt=0)
    """How long a succeeded job and its result are kept."""
    dead_ttl_seconds: float = Field(default=604_800.0, gt=0)
    """How long a dead job is kept for inspection and retry."""
    idle_poll_seconds: float = Field(default=0.05, gt=0)
    """Embedded SQLite only: how often an idle worker looks for due jobs."""

    @model_validator(mode="after")
    def _check_timing(self) -> JobSettings:
        if self.heartbeat_seconds >= self.lease_seconds:
            msg = "heartbeat_seconds must be below lease_seconds"
            raise ValueError(msg)
        if any(w < 0 for w in self.priority_weights) or sum(self.priority_weights) == 0:
            msg = "priority_weights must be three non-negative numbers, not all zero"
            raise ValueError(msg)
        return self


class StreamingSettings(_Settings):
    """Concurrent stream leases."""

    section: ClassVar[str] = "streaming"

    max_concurrent_per_user: int = Field(default=5, gt=0)
    """Streams one user may hold open at once, across every server."""
    lease_ttl_seconds: int = Field(default=180, gt=0)
    """A lease not refreshed for this long expires (its server died)."""
    lease_refresh_interval_seconds: float | None = Field(default=None, gt=0)
    """How often a held lease is refreshed in the background; None means a third
    of ``lease_ttl_seconds``. Must be below the TTL."""
    backend_timeout_seconds: float = Field(default=0.5, gt=0)
    """Time a lease operation may take before it fails (closed: 503)."""

    @model_validator(mode="after")
    def _check_refresh(self) -> StreamingSettings:
        interval = self.lease_refresh_interval_seconds
        if interval is not None and interval >= self.lease_ttl_seconds:
            msg = "lease_refresh_interval_seconds must be below lease_ttl_seconds"
            raise ValueError(msg)
        return self


class RequestMetricsSettings(_Settings):
    """Per-request performance records."""

    section: ClassVar[str] = "observability.request_metrics"

    enabled: bool = False
    """Capture a record for every request not excluded below."""
    exclude_paths: tuple[str, ...] = ("/health", "/healthz", "/readyz", "/metrics", "/favicon.ico")
    """Paths never recorded: a path equal to one of these or below it (``/metrics``
    also covers ``/metrics/requests``, not ``/metricsx``)."""
    buffer_size: int = Field(default=10_000, ge=1, le=1_000_000)
    """Records held in memory between flushes; when full, new records are dropped
    and counted in ``request_metrics_dropped_total``. Default: 10 000."""
    batch_size: int = Field(default=500, ge=1, le=1_000)
    """Records per stored batch (one job, one INSERT). Default: 500."""
    flush_interval_seconds: float = Field(default=1.0, gt=0, le=3_600)
    """How often buffered records are handed to the job queue. Default: 1 s."""
    retention_days: int = Field(default=30, ge=1)
    """Records older than this are deleted (hourly, by the worker). Default: 30."""
    max_queued_batches: int = Field(default=100, ge=1)
    """When this many low-priority jobs already wait (no worker keeps up), new
    batches are dropped and counted in ``request_metrics_batches_dropped_total``.
    Default: 100."""

    @field_validator("exclude_paths")
    @classmethod
    def _check_excluded(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Compared with request paths, which always start with '/'.
        for path in value:
            if not path.startswith("/"):
                msg = f"expected paths starting with '/' such as /healthz, got {path!r}"
                raise ValueError(msg)
        return value


def _metrics_token_hash_from_env() -> str | None:
    token = os.environ.get("KERNEL_METRICS_TOKEN", "").strip()
    return hashlib.sha256(token.encode("utf-8")).hexdigest() if token else None


class ObservabilitySettings(_Settings):
    """Logging and metrics."""

    section: ClassVar[str] = "observability"

    service_name: str = "app"
    """Name put on every log line."""
    log_level: LogLevel = _from_env("LOG_LEVEL", parse_str, "INFO")
    """Lowest level logged; env ``LOG_LEVEL``. Default: INFO."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """``auto`` writes readable console lines in debug mode and JSON lines otherwise."""
    access_log: bool = True
    """Write one line per HTTP request."""
    request_metrics: RequestMetricsSettings = Field(default_factory=RequestMetricsSettings)
    """Per-request records (see :class:`RequestMetricsSettings`)."""
    metrics_prefix: str = Field(default="", pattern=r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")
    """Put in front of every Prometheus metric name (``myapp_`` gives
    ``myapp_http_requests_total``). Default: none."""
    metrics_token_hash: str | None = Field(
        default_factory=_metrics_token_hash_from_env,
        pattern=r"^[0-9a-f]{64}$",
        json_schema_extra={"env": "KERNEL_METRICS_TOKEN", "secret": True},
    )
    """SHA-256 (hex) of a bearer token that may read ``/metrics`` when it is
    admin-protected, for Prometheus. Env ``KERNEL_METRICS_TOKEN`` holds the plain
    token instead; it is hashed when read and never kept. Default: none."""
    metrics_max_series_per_metric: int = Field(default=2000, gt=0)
    """Label combinations one metric may hold; further ones are dropped and counted
    in ``app_kernel_metrics_dropped_series_total``."""
    prometheus_multiproc_dir: str | None = _from_env("PROMETHEUS_MULTIPROC_DIR", parse_str, None)
    """Directory of prometheus_client's multiprocess mode, for several API
    processes; env ``PROMETHEUS_MULTIPROC_DIR``, which must be set before the
    processes start. Default: none (one process)."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        if isinstance(value, str):
            upper = value.strip().upper()
            if upper not in _LOG_LEVELS:
                msg = f"expected one of {', '.join(_LOG_LEVELS)}, got {value!r}"
                raise ValueError(msg)
            return upper
        return value


class ReliabilitySettings(_Settings):
    """Rate limiting and idempotency."""

    section: ClassVar[str] = "reliability"

    rate_limit_requests: int = Field(default=100, gt=0)
    """Requests allowed per window by default."""
    rate_limit_window_seconds: int = Field(default=60, gt=0)
    """Length of the default rate-limit window."""
    global_rate_limit: bool = False
    """Apply the default limit to every route but health, metrics and docs.
    ``create_service`` turns it on; ``init_app_kernel`` leaves it to you."""
    exact_window_threshold: int = Field(default=128, gt=0)
    """Limits up to this many requests use an exact sliding log; larger ones a
    sliding-window counter in constant memory."""
    backend_timeout_seconds: float = Field(default=0.05, gt=0)
    """Time a rate-limit check may take before the backend counts as down."""
    fail_open: bool = True
    """With the backend down, let requests through (logged and counted);
    False answers 503 instead."""
    shadow_mode: bool = False
    """Count and log what would be refused, but refuse nothing."""
    idempotency_ttl_seconds: int = Field(default=86_400, gt=0)
    """How long a stored response is replayed for its Idempotency-Key."""
    idempotency_lock_ttl_seconds: float = Field(default=30.0, gt=0)
    """A claim whose process died is released after this long; a live handler
    heartbeats it."""
    idempotency_key_max_length: int = Field(default=255, ge=16, le=1024)
    """Longest Idempotency-Key accepted; longer ones get 400."""
    idempotency_max_body_bytes: int = Field(default=262_144, gt=0)
    """Largest response body stored for replay; larger answers are not stored."""
    idempotency_all_routes: bool = False
    """Apply idempotency to every POST and PATCH route, not only those that opt in."""
    idempotency_backend_timeout_seconds: float = Field(default=0.5, gt=0)
    """Time an idempotency operation may take before it fails (closed: 503)."""


class HttpSettings(_Settings):
    """The HTTP layer: CORS, hosts, proxies, body size, readiness."""

    section: ClassVar[str] = "http"

    cors_origins: tuple[str, ...] = ("*",)
    """Origins allowed by CORS. ``("*",)`` cannot be combined with credentials."""
    cors_allow_credentials: bool = False
    """Let browsers send cookies and Authorization on cross-origin requests."""
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    """Largest request body accepted; larger ones get 413."""
    trusted_proxies: tuple[str, ...] = ()
    """Peers (addresses or CIDR ranges) whose forwarding headers are believed;
    ``unix`` trusts a proxy on a Unix socket, whose requests have no peer address."""
    allowed_hosts: tuple[str, ...] = ("*",)
    """Host header values accepted (``*.example.com`` allowed); others get 400."""
    readiness_timeout_seconds: float = Field(default=2.0, gt=0)
    """Time each readiness check may take before it counts as failed."""
    freeze_gc_after_start: bool = True
    """Once the kernel has started, move every object alive to the garbage
    collector's permanent generation (``gc.freeze()``), once per process. Full
    collections then skip the framework's import-time heap: without it each
    one stalls every request in flight for 100-160 ms on a 2-core machine."""
    gc_threshold: int | None = Field(default=10_000, ge=700, le=10_000_000)
    """Allocations between two runs of the collector's youngest generation
    (``gc.set_threshold``), set by every process that starts the kernel (API and
    workers); None leaves the interpreter's setting alone. At the interpreter's
    700 a busy service runs the collector every few requests, over the objects
    of every request in flight, which reference counting frees anyway when the
    request ends: 4% of the CPU and a colder cache. bench_http_stack served 7%
    more requests per second with 10000, the default."""

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Browsers send an Origin as scheme://host[:port], lowercase, with no path,
        # and it is compared as a string: "https://app.example/" would never match.
        origins = []
        for entry in value:
            if entry == "*":
                origins.append(entry)
                continue
            if not _ORIGIN.fullmatch(entry):
                msg = (
                    "expected '*' or origins such as https://app.example.com or "
                    f"http://localhost:3000 (scheme://host[:port], no path or trailing /), "
                    f"got {entry!r}"
                )
                raise ValueError(msg)
            origins.append(entry.lower())
        return tuple(origins)

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Compared with the Host header once its port is dropped: a scheme, a port
        # or a path in an entry would never match, and no entry refuses everything.
        if not value:
            msg = "expected at least one host, or '*' for any; none would refuse every request"
            raise ValueError(msg)
        for entry in value:
            if entry != "*" and not _HOST.fullmatch(entry):
                msg = (
                    "expected '*', host names such as api.example.com or *.example.com, "
                    f"or IP addresses ([::1] for IPv6), without scheme, port or path; got {entry!r}"
                )
                raise ValueError(msg)
        return tuple(entry.lower() for entry in value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        entries = []
        for entry in value:
            if entry.strip().lower() == UNIX_PEER:
                entries.append(UNIX_PEER)
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                msg = (
                    "expected IP addresses or CIDR ranges such as 10.0.0.0/8, or "
                    f"{UNIX_PEER!r} for a proxy on a Unix socket, got {entry!r}"
                )
                raise ValueError(msg) from None
            entries.append(entry)
        return tuple(entries)

    @model_validator(mode="after")
    def _check_cors(self) -> HttpSettings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            msg = (
                "cors_origins contains '*' while cors_allow_credentials is true: "
                "browsers refuse that combination; list the allowed origins instead"
            )
            raise ValueError(msg)
        return self


class FeatureSettings(_Settings):
    """Which kernel routes are mounted, and how they are protected.

    Fields not passed explicitly read their ``KERNEL_*`` environment variable.
    """

    section: ClassVar[str] = "features"

    enable_health_routes: bool = _from_env("KERNEL_ENABLE_HEALTH", parse_bool, True)
    """Mount the liveness and readiness probes; env ``KERNEL_ENABLE_HEALTH``."""
    health_path: str = "/healthz"
    """Liveness probe path."""
    ready_path: str = "/readyz"
    """Readiness probe path."""
    enable_metrics: bool = _from_env("KERNEL_ENABLE_METRICS", parse_bool, True)
    """Mount the Prometheus endpoint; env ``KERNEL_ENABLE_METRICS``."""
    metrics_path: str = "/metrics"
    """Prometheus endpoint path."""
    protect_metrics: Literal["admin", "internal", "none"] = _from_env(
        "KERNEL_PROTECT_METRICS", parse_choice(("admin", "internal", "none")), "admin"
    )
    """Who may read metrics; env ``KERNEL_PROTECT_METRICS``. Default: admin."""
    enable_auth_routes: bool = _from_env("KERNEL_ENABLE_AUTH", parse_bool, True)
    """Mount login, me, refresh and logout; env ``KERNEL_ENABLE_AUTH``."""
    auth_mode: Literal["local", "apikey", "external"] = _from_env(
        "KERNEL_AUTH_MODE", parse_choice(("local", "apikey", "external")), "local"
    )
    """Where credentials come from; env ``KERNEL_AUTH_MODE``. Default: local."""
    allow_self_signup: bool = Field(
        default_factory=lambda: bool(signup_from_env()),
        # Both variables rank above a manifest, not only the KERNEL_ one.
        json_schema_extra={"env": ["KERNEL_ALLOW_SIGNUP", "ALLOW_SELF_SIGNUP"]},
    )
    """Mount the register route; env ``KERNEL_ALLOW_SIGNUP`` (or ``ALLOW_SELF_SIGNUP``).
    Default: False."""
    auth_prefix: str = "/auth"
    """Prefix of the auth routes."""
    enable_audit_routes: bool = _from_env("KERNEL_ENABLE_AUDIT", parse_bool, False)
    """Mount the admin-only audit query route; env ``KERNEL_ENABLE_AUDIT``."""
    audit_path: str = "/audit"
    """Audit query path."""

    @field_validator("health_path", "ready_path", "metrics_path", "auth_prefix", "audit_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or (len(value) > 1 and value.endswith("/")):
            msg = f"expected a path starting with '/' and not ending with '/', got {value!r}"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _distinct_paths(self) -> FeatureSettings:
        # Two kernel routes on one path: the one mounted first would hide the other.
        paths = [
            ("health_path", self.health_path, self.enable_health_routes),
            ("ready_path", self.ready_path, self.enable_health_routes),
            ("metrics_path", self.metrics_path, self.enable_metrics),
            ("audit_path", self.audit_path, self.enable_audit_routes),
        ]
        seen: dict[str, str] = {}
        for name, path, mounted in paths:
            if not mounted:
                continue
            if path in seen:
                msg = f"{seen[path]} and {name} are both {path!r}: each kernel route needs its own"
                raise ValueError(msg)
            seen[path] = name
        return self

    @classmethod
    def from_env(cls) -> FeatureSettings:
        """Build feature flags from the ``KERNEL_*`` environment variables."""
        return cls()


class KernelSettings(_Settings):
    """Everything the kernel needs to start, in one frozen object."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    """Redis connection; without a URL the kernel uses embedded SQLite."""
    auth: AuthSettings = Field(default_factory=AuthSettings)
    """Token signing and lifetimes."""
    jobs: JobSettings = Field(default_factory=JobSettings)
    """Background job execution."""
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    """Concurrent stream leases."""
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    """Logging and metrics."""
    reliability: ReliabilitySettings = Field(default_factory=ReliabilitySettings)
    """Rate limiting and idempotency."""
    features: FeatureSettings = Field(default_factory=FeatureSettings.from_env)
    """Auto-mounted routes."""
    http: HttpSettings = Field(default_factory=HttpSettings)
    """The HTTP layer."""
    database_url: str | None = _from_env("DATABASE_URL", parse_str, None)
    """SQLAlchemy URL of the kernel's SQL database; env ``DATABASE_URL``.
    Default: an SQLite file ``app.db`` in ``data_dir``. ``postgresql://`` URLs
    use asyncpg."""
    health_checks: tuple[HealthCheck, ...] = ()
    """The app's readiness checks, run by the readiness probe."""
    debug: bool = _from_env("DEBUG", parse_bool, False)
    """Debug mode: readable logs, exception text in 500 answers, no secret
    required; env ``DEBUG``. Never in production."""
    data_dir: str = "./.app_kernel"
    """Folder of the embedded SQLite files."""

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return normalise_database_url(value)

    @field_validator("health_checks")
    @classmethod
    def _check_health_checks(cls, value: tuple[HealthCheck, ...]) -> tuple[HealthCheck, ...]:
        for check in value:
            if not callable(check):
                msg = f"expected async callables returning (ok, message), got {check!r}"
                raise ValueError(msg)
        return value

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file in ``data_dir`` when unset."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{Path(self.data_dir) / 'app.db'}"

    @property
    def coordination_path(self) -> Path:
        """The embedded SQLite file used when no Redis URL is set."""
        return Path(self.data_dir) / "kernel.db"

    @classmethod
    def from_manifest(cls, path: str | Path, **explicit: Any) -> KernelSettings:
        """Build settings from a ``manifest.yaml``.

        Environment variables win over the manifest, and ``explicit`` keyword
        arguments (as for the constructor) win over both.

        Raises:
            SettingsError: the file is missing or malformed, a key is unknown
                (the message names the nearest known key) or a value is invalid.
        """
        from app_kernel._config.manifest import load_manifest, merge_layers

        manifest = load_manifest(path, cls)
        return cls(**merge_layers(cls, [manifest], explicit))


def normalise_database_url(value: str) -> str:
    """Map plain driver names onto the async drivers the kernel uses."""
    expected = (
        "expected an SQLAlchemy URL such as sqlite+aiosqlite:///./app.db "
        "or postgresql+asyncpg://user@host/dbname"
    )
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        msg = f"{expected}, got {_hide_password(value)!r}"
        raise ValueError(msg) from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql" and driver in ("", "asyncpg"):
        if not url.host and not url.query.get("host"):
            msg = f"{expected}; the PostgreSQL URL has no host"
            raise ValueError(msg)
        return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    msg = f"{expected}; driver {url.drivername!r} is not supported (use sqlite or postgresql)"
    raise ValueError(msg)
