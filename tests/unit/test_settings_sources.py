"""Where settings come from: explicit > environment > manifest > defaults, and ServiceConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from app_kernel import KernelSettings, ServiceConfig, create_service
from app_kernel._runtime import kernel_of_app
from app_kernel.service_config import to_kernel_settings
from app_kernel.settings import RedisSettings, ReliabilitySettings

SECRET = "a-service-secret-that-is-long-enough-0123456789"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(
        f"""
data_dir: {tmp_path / "data"}
debug: false
redis:
  url: redis://manifest-host:6379/0
  key_prefix: "manifest:"
reliability:
  rate_limit_requests: 7
  rate_limit_window_seconds: 45
observability:
  log_level: WARNING
  service_name: from-manifest
features:
  protect_metrics: none
  allow_self_signup: true
http:
  max_body_bytes: 2048
"""
    )
    return path


class TestFromManifest:
    """KernelSettings.from_manifest ranks explicit > env > manifest > defaults."""

    def test_manifest_beats_defaults(self, manifest: Path) -> None:
        settings = KernelSettings.from_manifest(manifest)
        assert settings.reliability.rate_limit_requests == 7
        assert settings.http.max_body_bytes == 2048
        assert settings.observability.service_name == "from-manifest"
        assert settings.redis.url == "redis://manifest-host:6379/0"
        assert settings.features.protect_metrics == "none"
        # Not in the manifest: the documented defaults.
        assert settings.jobs.worker_count == 4
        assert settings.http.readiness_timeout_seconds == 2.0

    def test_env_beats_manifest(self, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DEBUG", "true")
        monkeypatch.setenv("LOG_LEVEL", "error")
        monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/0")
        monkeypatch.setenv("KERNEL_PROTECT_METRICS", "internal")
        settings = KernelSettings.from_manifest(manifest)
        assert settings.debug is True
        assert settings.observability.log_level == "ERROR"
        assert settings.redis.url == "redis://env-host:6379/0"
        assert settings.features.protect_metrics == "internal"
        # Fields of the same sections without a variable keep the manifest's values.
        assert settings.redis.key_prefix == "manifest:"
        assert settings.observability.service_name == "from-manifest"

    @pytest.mark.parametrize("var", ["KERNEL_ALLOW_SIGNUP", "ALLOW_SELF_SIGNUP"])
    def test_either_signup_variable_beats_manifest(
        self, manifest: Path, monkeypatch: pytest.MonkeyPatch, var: str
    ) -> None:
        monkeypatch.setenv(var, "false")
        assert KernelSettings.from_manifest(manifest).features.allow_self_signup is False

    def test_explicit_beats_env_and_manifest(
        self, manifest: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DEBUG", "true")
        monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/0")
        settings = KernelSettings.from_manifest(
            manifest,
            debug=False,
            redis=RedisSettings(url="redis://explicit-host:6379/0"),
            reliability=ReliabilitySettings(rate_limit_window_seconds=30),
        )
        assert settings.debug is False
        assert settings.redis.url == "redis://explicit-host:6379/0"
        assert settings.reliability.rate_limit_window_seconds == 30

    def test_explicit_section_only_overrides_the_fields_it_was_given(
        self, manifest: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/0")
        settings = KernelSettings.from_manifest(
            manifest,
            redis=RedisSettings(key_prefix="explicit:"),
            reliability={"rate_limit_requests": 9},
        )
        assert settings.redis.key_prefix == "explicit:"
        assert settings.redis.url == "redis://env-host:6379/0"
        assert settings.reliability.rate_limit_requests == 9
        assert settings.reliability.rate_limit_window_seconds == 45

    def test_env_beats_defaults_without_a_manifest(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("JWT_SECRET", SECRET)
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.internal/app")
        settings = KernelSettings()
        assert settings.auth.token_secret == SECRET
        assert settings.database_url == "postgresql+asyncpg://u@db.internal/app"


def _settings_of(app: FastAPI) -> KernelSettings:
    return kernel_of_app(app).settings


class TestCreateService:
    """create_service(config=ServiceConfig(...), manifest=...) ranks the same way."""

    def test_config_defaults_rank_below_the_manifest(self, manifest: Path) -> None:
        app = create_service("svc", [], config=ServiceConfig(), manifest=manifest)
        settings = _settings_of(app)
        assert settings.reliability.rate_limit_requests == 7
        assert settings.reliability.rate_limit_window_seconds == 45
        assert settings.observability.log_level == "WARNING"
        assert settings.features.allow_self_signup is True

    def test_env_beats_manifest(self, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LOG_LEVEL", "ERROR")
        monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/0")
        monkeypatch.setenv("ALLOW_SELF_SIGNUP", "false")
        app = create_service("svc", [], config=ServiceConfig(), manifest=manifest)
        settings = _settings_of(app)
        assert settings.observability.log_level == "ERROR"
        assert settings.redis.url == "redis://env-host:6379/0"
        assert settings.features.allow_self_signup is False

    def test_explicit_config_beats_env_and_manifest(
        self, manifest: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DEBUG", "false")
        monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/0")
        config = ServiceConfig(
            debug=True, rate_limit_window=30, redis_url="redis://explicit-host:6379/0"
        )
        settings = _settings_of(create_service("svc", [], config=config, manifest=manifest))
        assert settings.debug is True
        assert settings.reliability.rate_limit_window_seconds == 30
        assert settings.redis.url == "redis://explicit-host:6379/0"
        # Untouched by the config: still the manifest's.
        assert settings.reliability.rate_limit_requests == 7

    def test_name_becomes_the_service_name(self, manifest: Path) -> None:
        settings = _settings_of(
            create_service("orders", [], config=ServiceConfig(), manifest=manifest)
        )
        assert settings.observability.service_name == "orders"

    def test_service_config_defaults_apply_without_other_sources(self) -> None:
        settings = to_kernel_settings(ServiceConfig(), name="svc")
        assert settings.auth.access_token_expires_minutes == 24 * 60
        assert settings.reliability.rate_limit_requests == 100
        assert settings.reliability.rate_limit_window_seconds == 60
        assert settings.http.cors_origins == ("*",)
        assert settings.debug is False
        assert settings.redis.url is None


def test_service_config_maps_every_field() -> None:
    config = ServiceConfig(
        jwt_secret=SECRET,
        jwt_expiry_hours=2,
        auth_enabled=False,
        allow_self_signup=True,
        redis_url="redis://cache:6379/1",
        cors_origins=("https://app.example.com",),
        rate_limit_requests=5,
        rate_limit_window=10,
        debug=True,
        database_url="postgresql://svc@db.internal/app",
        log_level="warning",
    )
    settings = to_kernel_settings(config, name="billing")
    assert settings.observability.service_name == "billing"
    assert settings.auth.token_secret == SECRET
    assert settings.auth.access_token_expires_minutes == 120
    assert settings.features.enable_auth_routes is False
    assert settings.features.allow_self_signup is True
    assert settings.redis.url == "redis://cache:6379/1"
    assert settings.http.cors_origins == ("https://app.example.com",)
    assert settings.reliability.rate_limit_requests == 5
    assert settings.reliability.rate_limit_window_seconds == 10
    assert settings.debug is True
    assert settings.database_url == "postgresql+asyncpg://svc@db.internal/app"
    assert settings.observability.log_level == "WARNING"


def test_service_config_health_checks_reach_the_settings() -> None:
    async def disk() -> tuple[bool, str]:
        return True, "ok"

    settings = to_kernel_settings(ServiceConfig(), name="svc", health_checks=[disk])
    assert settings.health_checks == (disk,)


def test_service_config_from_env_reads_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "JWT_SECRET": SECRET,
        "REDIS_URL": "redis://cache:6379/2",
        "DATABASE_URL": "sqlite:///./svc.db",
        "DEBUG": "on",
        "CORS_ORIGINS": "https://a.example.com, https://b.example.com",
        "RATE_LIMIT_REQUESTS": "11",
        "RATE_LIMIT_WINDOW": "12",
        "ALLOW_SELF_SIGNUP": "true",
        "JWT_EXPIRY_HOURS": "3",
        "LOG_LEVEL": "debug",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    config = ServiceConfig.from_env()
    assert config.jwt_secret == SECRET
    assert config.redis_url == "redis://cache:6379/2"
    assert config.database_url == "sqlite:///./svc.db"
    assert config.debug is True
    assert config.cors_origins == ("https://a.example.com", "https://b.example.com")
    assert (config.rate_limit_requests, config.rate_limit_window) == (11, 12)
    assert config.allow_self_signup is True
    assert config.jwt_expiry_hours == 3
    assert config.log_level == "DEBUG"


def test_from_env_without_variables_keeps_the_defaults() -> None:
    assert ServiceConfig.from_env() == ServiceConfig()


def test_secrets_are_not_in_reprs() -> None:
    config = ServiceConfig(jwt_secret=SECRET)
    settings = to_kernel_settings(config, name="svc")
    assert SECRET not in repr(config)
    assert SECRET not in repr(settings)
