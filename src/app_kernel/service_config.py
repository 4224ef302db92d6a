"""``ServiceConfig``: the short configuration of :func:`app_kernel.create_service`.

It maps onto :class:`~app_kernel.settings.KernelSettings` in one place,
:func:`to_kernel_settings`, which is the only code that knows both shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app_kernel._config.env import (
    env_value,
    parse_bool,
    parse_csv,
    parse_int,
    parse_str,
    signup_from_env,
)
from app_kernel._config.manifest import load_manifest, merge_layers
from app_kernel.errors import SettingsError
from app_kernel.settings import KernelSettings, _describe
from app_kernel.types import HealthCheck

__all__ = ("ServiceConfig", "to_kernel_settings")


class ServiceConfig(BaseModel):
    """The handful of settings most services change, with twelve-factor names.

    Only fields passed explicitly (or read by :meth:`from_env`) override the
    environment and the manifest; the defaults shown here rank below both.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    jwt_secret: str | None = Field(default=None, repr=False)
    """Signs the kernel's tokens; required outside debug mode (32 bytes or more)."""
    jwt_expiry_hours: int = Field(default=24, gt=0)
    """Access-token lifetime, in hours."""
    auth_enabled: bool = True
    """False mounts no auth routes; dependencies needing a user then answer 401."""
    allow_self_signup: bool = False
    """Mount the register route."""
    redis_url: str | None = None
    """Redis for jobs, rate limits, leases and revocation; embedded SQLite without it."""
    cors_origins: tuple[str, ...] = ("*",)
    """Origins allowed by CORS."""
    rate_limit_requests: int = Field(default=100, gt=0)
    """Requests allowed per window by the global limit."""
    rate_limit_window: int = Field(default=60, gt=0)
    """Global rate-limit window, in seconds."""
    debug: bool = False
    """Debug mode; never in production."""
    database_url: str | None = None
    """SQLAlchemy URL of the SQL database; SQLite in the data folder without it."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Lowest level logged."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    if not TYPE_CHECKING:

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise SettingsError(_describe("ServiceConfig", exc)) from None

    @classmethod
    def from_env(cls) -> ServiceConfig:
        """Read ``JWT_SECRET``, ``REDIS_URL``, ``DATABASE_URL``, ``DEBUG``,
        ``CORS_ORIGINS`` (comma list), ``RATE_LIMIT_REQUESTS``,
        ``RATE_LIMIT_WINDOW``, ``ALLOW_SELF_SIGNUP``, ``JWT_EXPIRY_HOURS`` and
        ``LOG_LEVEL``. Unset variables keep the defaults.

        Raises:
            SettingsError: a variable holds a value of the wrong form; the
                message names it.
        """
        readers: dict[str, tuple[str, Callable[[str, str], Any]]] = {
            "jwt_secret": ("JWT_SECRET", parse_str),
            "redis_url": ("REDIS_URL", parse_str),
            "database_url": ("DATABASE_URL", parse_str),
            "debug": ("DEBUG", parse_bool),
            "cors_origins": ("CORS_ORIGINS", parse_csv),
            "rate_limit_requests": ("RATE_LIMIT_REQUESTS", parse_int),
            "rate_limit_window": ("RATE_LIMIT_WINDOW", parse_int),
            "jwt_expiry_hours": ("JWT_EXPIRY_HOURS", parse_int),
            "log_level": ("LOG_LEVEL", parse_str),
        }
        values: dict[str, Any] = {}
        for field, (var, parser) in readers.items():
            value = env_value(var, parser)
            if value is not None:
                values[field] = value
        signup = signup_from_env()
        if signup is not None:
            values["allow_self_signup"] = signup
        try:
            return cls(**values)
        except SettingsError as exc:
            # Name the variables rather than the fields: that is what the user set.
            message = str(exc)
            for field, (var, _) in readers.items():
                message = message.replace(f"ServiceConfig.{field}", var)
            raise SettingsError(message) from None


_FIELD_MAP: dict[str, tuple[str, ...]] = {
    "jwt_secret": ("auth", "token_secret"),
    "jwt_expiry_hours": ("auth", "access_token_expires_minutes"),
    "auth_enabled": ("features", "enable_auth_routes"),
    "allow_self_signup": ("features", "allow_self_signup"),
    "redis_url": ("redis", "url"),
    "cors_origins": ("http", "cors_origins"),
    "rate_limit_requests": ("reliability", "rate_limit_requests"),
    "rate_limit_window": ("reliability", "rate_limit_window_seconds"),
    "debug": ("debug",),
    "database_url": ("database_url",),
    "log_level": ("observability", "log_level"),
}


def _mapped(config: ServiceConfig, fields: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in fields:
        value = getattr(config, field)
        if value is None:
            continue
        if field == "jwt_expiry_hours":
            value = value * 60
        *sections, name = _FIELD_MAP[field]
        target = out
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    return out


def to_kernel_settings(
    config: ServiceConfig,
    *,
    name: str,
    health_checks: Sequence[HealthCheck] = (),
    manifest: str | Path | None = None,
) -> KernelSettings:
    """Turn a :class:`ServiceConfig` into :class:`KernelSettings`.

    The mapping: ``name`` becomes ``observability.service_name``;
    ``jwt_secret`` becomes ``auth.token_secret``; ``jwt_expiry_hours`` becomes
    ``auth.access_token_expires_minutes`` (times 60); ``auth_enabled`` becomes
    ``features.enable_auth_routes``; ``allow_self_signup`` becomes
    ``features.allow_self_signup``; ``redis_url`` becomes ``redis.url``;
    ``cors_origins`` becomes ``http.cors_origins``; ``rate_limit_requests`` and
    ``rate_limit_window`` become ``reliability.rate_limit_requests`` and
    ``reliability.rate_limit_window_seconds``; ``debug``, ``database_url`` and
    ``log_level`` keep their meaning.

    Fields set explicitly on ``config`` rank above the environment; its
    defaults rank below the manifest.
    """
    defaults_layer = _mapped(
        config, [f for f in ServiceConfig.model_fields if f not in config.model_fields_set]
    )
    explicit = _mapped(config, sorted(config.model_fields_set))
    observability = explicit.setdefault("observability", {})
    observability["service_name"] = name
    if health_checks:
        explicit["health_checks"] = tuple(health_checks)
    # create_service applies the global limit unless the manifest says otherwise.
    defaults_layer.setdefault("reliability", {})["global_rate_limit"] = True
    layers: list[dict[str, Any]] = [defaults_layer]
    if manifest is not None:
        layers.append(load_manifest(manifest, KernelSettings))
    return KernelSettings(**merge_layers(KernelSettings, layers, explicit))
