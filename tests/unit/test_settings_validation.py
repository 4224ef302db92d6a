"""Settings are frozen, and every bad value fails at construction naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app_kernel import KernelSettings, ServiceConfig, SettingsError
from app_kernel.settings import (
    AuthSettings,
    FeatureSettings,
    HttpSettings,
    RedisSettings,
    ReliabilitySettings,
    RequestMetricsSettings,
    StreamingSettings,
)


class TestFrozen:
    """Assigning to any settings object raises; the value stays as built."""

    def test_top_level_field(self) -> None:
        settings = KernelSettings(debug=False)
        with pytest.raises(ValidationError, match="frozen"):
            settings.debug = True  # type: ignore[misc]
        assert settings.debug is False

    def test_nested_section(self) -> None:
        settings = KernelSettings()
        with pytest.raises(ValidationError, match="frozen"):
            settings.http.max_body_bytes = 1  # type: ignore[misc]
        assert settings.http.max_body_bytes == 1_048_576

    def test_service_config(self) -> None:
        config = ServiceConfig(debug=True)
        with pytest.raises(ValidationError, match="frozen"):
            config.debug = False  # type: ignore[misc]

    def test_collections_are_immutable(self) -> None:
        settings = KernelSettings(
            http=HttpSettings(cors_origins=["https://a.example"]),
            auth=AuthSettings(previous_keys={"k0": "old-secret"}),
        )
        assert isinstance(settings.http.cors_origins, tuple)
        with pytest.raises(TypeError):
            settings.auth.previous_keys["k1"] = "new"  # type: ignore[index]


@pytest.mark.parametrize(
    ("build", "names"),
    [
        pytest.param(
            lambda: ReliabilitySettings(rate_limit_window_seconds=-1),
            "reliability.rate_limit_window_seconds",
            id="negative-rate-limit-window",
        ),
        pytest.param(
            lambda: KernelSettings(reliability={"rate_limit_requests": 0}),
            "reliability.rate_limit_requests",
            id="zero-rate-limit-requests",
        ),
        pytest.param(
            lambda: StreamingSettings(lease_ttl_seconds=-5),
            "streaming.lease_ttl_seconds",
            id="negative-lease-ttl",
        ),
        pytest.param(
            lambda: AuthSettings(login_failure_window_seconds=-1),
            "auth.login_failure_window_seconds",
            id="negative-login-window",
        ),
        pytest.param(
            lambda: HttpSettings(readiness_timeout_seconds=-0.5),
            "http.readiness_timeout_seconds",
            id="negative-readiness-timeout",
        ),
        pytest.param(
            lambda: ServiceConfig(rate_limit_window=-60),
            "rate_limit_window",
            id="service-config-negative-window",
        ),
        pytest.param(
            lambda: FeatureSettings(protect_metrics="public"),
            "features.protect_metrics",
            id="unknown-protect-metrics",
        ),
        pytest.param(
            lambda: FeatureSettings(auth_mode="ldap"),
            "features.auth_mode",
            id="unknown-auth-mode",
        ),
        pytest.param(
            lambda: HttpSettings(cors_origins=["*"], cors_allow_credentials=True),
            "cors_origins",
            id="cors-wildcard-with-credentials",
        ),
        pytest.param(
            lambda: KernelSettings(
                http={"cors_origins": ["https://a.example", "*"], "cors_allow_credentials": True}
            ),
            "cors_allow_credentials",
            id="cors-wildcard-with-credentials-nested",
        ),
        pytest.param(
            lambda: RedisSettings(url="localhost:6379"),
            "redis.url",
            id="redis-url-without-scheme",
        ),
        pytest.param(
            lambda: RedisSettings(url="http://localhost:6379"),
            "redis.url",
            id="redis-url-wrong-scheme",
        ),
        pytest.param(
            lambda: RedisSettings(url="redis://localhost:sixty"),
            "redis.url",
            id="redis-url-bad-port",
        ),
        pytest.param(
            # redis-py ignores such a path and uses database 0
            lambda: RedisSettings(url="redis://localhost:6379/cache"),
            "redis.url",
            id="redis-url-path-not-a-database-number",
        ),
        pytest.param(
            lambda: RedisSettings(url="redis://localhost:6379/0?socket_timeout=soon"),
            "redis.url",
            id="redis-url-option-with-a-bad-value",
        ),
        pytest.param(
            lambda: RedisSettings(url="redis://localhost:6379/0?no_such_option=1"),
            "redis.url",
            id="redis-url-unknown-option",
        ),
        pytest.param(
            # redis-py raises its own errors for these, not ValueError
            lambda: RedisSettings(url="rediss://localhost:6380/0?ssl_cert_reqs=bogus"),
            "redis.url",
            id="redis-url-bad-tls-option",
        ),
        pytest.param(
            lambda: RedisSettings(url="redis://localhost:6379/0?protocol=9"),
            "redis.url",
            id="redis-url-bad-protocol",
        ),
        pytest.param(
            lambda: RedisSettings(url="unix:///run/redis.sock?db=first"),
            "redis.url",
            id="redis-unix-url-bad-db",
        ),
        pytest.param(
            lambda: RedisSettings(key_prefix="app:{tenant}:"),
            "redis.key_prefix",
            id="braces-in-key-prefix",
        ),
        pytest.param(
            lambda: RedisSettings(key_prefix="app}:"),
            "redis.key_prefix",
            id="closing-brace-in-key-prefix",
        ),
        pytest.param(
            lambda: KernelSettings(database_url="not a url"),
            "database_url",
            id="database-url-garbage",
        ),
        pytest.param(
            lambda: KernelSettings(database_url="mysql://user@db/app"),
            "database_url",
            id="database-url-unsupported-driver",
        ),
        pytest.param(
            lambda: KernelSettings(database_url="postgresql://app@db:fivefourthreetwo/app"),
            "database_url",
            id="database-url-port-not-a-number",
        ),
        pytest.param(
            lambda: KernelSettings(database_url="postgresql:///app"),
            "database_url",
            id="database-url-postgres-without-host",
        ),
        pytest.param(
            lambda: HttpSettings(trusted_proxies=["10.0.0.0/8", "proxy.internal"]),
            "http.trusted_proxies",
            id="trusted-proxy-not-an-address",
        ),
        pytest.param(
            lambda: HttpSettings(trusted_proxies=["unix:/run/app.sock"]),
            "http.trusted_proxies: expected IP addresses or CIDR ranges such as 10.0.0.0/8, or "
            "'unix'",
            id="trusted-proxy-socket-path-instead-of-unix",
        ),
        pytest.param(
            lambda: HttpSettings(cors_origins=("https://app.example.com/",)),
            "http.cors_origins: expected '*' or origins such as https://app.example.com",
            id="cors-origin-with-a-trailing-slash-that-would-never-match",
        ),
        pytest.param(
            lambda: HttpSettings(cors_origins=("app.example.com",)),
            "http.cors_origins",
            id="cors-origin-without-a-scheme",
        ),
        pytest.param(
            lambda: HttpSettings(allowed_hosts=("api.example.com:8443",)),
            "http.allowed_hosts: expected '*', host names such as api.example.com",
            id="allowed-host-with-a-port-that-would-never-match",
        ),
        pytest.param(
            lambda: HttpSettings(allowed_hosts=()),
            "http.allowed_hosts: expected at least one host",
            id="no-allowed-host-at-all",
        ),
        pytest.param(
            lambda: RequestMetricsSettings(exclude_paths=("metrics",)),
            "observability.request_metrics.exclude_paths: expected paths starting with '/'",
            id="request-metrics-exclusion-without-a-slash",
        ),
        pytest.param(
            lambda: FeatureSettings(metrics_path="/healthz"),
            "features: health_path and metrics_path are both '/healthz'",
            id="two-kernel-routes-on-one-path",
        ),
        pytest.param(
            lambda: HttpSettings(gc_threshold=0),
            "http.gc_threshold: expected greater than or equal to 700",
            id="gc-threshold-that-would-turn-the-collector-off",
        ),
        pytest.param(
            lambda: KernelSettings(http={"gc_threshold": "lots"}),
            "http.gc_threshold",
            id="gc-threshold-not-a-number",
        ),
        pytest.param(
            lambda: KernelSettings(observability={"log_level": "LOUD"}),
            "observability.log_level",
            id="unknown-log-level",
        ),
        pytest.param(
            lambda: KernelSettings(unknown_section={}),
            "unknown_section",
            id="unknown-field",
        ),
    ],
)
def test_bad_value_names_the_setting(build: object, names: str) -> None:
    with pytest.raises(SettingsError) as caught:
        build()  # type: ignore[operator]
    assert names in str(caught.value)


def test_redis_url_error_hides_the_password() -> None:
    with pytest.raises(SettingsError, match=r"redis\.url") as caught:
        RedisSettings(url="redis://:pa55word@cache:port/0")
    assert "pa55word" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["redis://:pa55word@cache:6379/nope", "redis://:pa55word@cache:6379/0?socket_timeout=x"],
)
def test_redis_url_path_and_option_errors_hide_the_password(url: str) -> None:
    with pytest.raises(SettingsError, match=r"redis\.url") as caught:
        RedisSettings(url=url)
    assert "pa55word" not in str(caught.value)


def test_database_url_error_hides_the_password() -> None:
    with pytest.raises(SettingsError, match=r"database_url") as caught:
        KernelSettings(database_url="postgresql://app:pa55word@db:port/app")
    assert "pa55word" not in str(caught.value)
    assert "expected an SQLAlchemy URL" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379",
        "redis://cache:6379/",
        "redis://cache:6379/15?socket_keepalive=true",
        "rediss://cache:6380/0",
        "unix:///run/redis.sock?db=2",
    ],
)
def test_good_redis_urls_pass(url: str) -> None:
    assert RedisSettings(url=url).url == url


def test_secret_field_error_does_not_echo_the_value() -> None:
    with pytest.raises(SettingsError, match=r"auth\.token_secret") as caught:
        AuthSettings(token_secret=["correct-horse-battery-staple"])  # type: ignore[arg-type]
    assert "correct-horse" not in str(caught.value)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (
            "postgresql://u:pw@db.internal:5432/app",
            "postgresql+asyncpg://u:pw@db.internal:5432/app",
        ),
        ("postgres://u@db.internal/app", "postgresql+asyncpg://u@db.internal/app"),
        ("postgresql+asyncpg://u@db.internal/app", "postgresql+asyncpg://u@db.internal/app"),
        ("sqlite:///./data/app.db", "sqlite+aiosqlite:///./data/app.db"),
    ],
)
def test_database_url_is_normalised_to_async_drivers(given: str, stored: str) -> None:
    assert KernelSettings(database_url=given).database_url == stored


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = KernelSettings(data_dir=str(tmp_path))
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


class TestEnvironmentValues:
    """A bad environment variable fails naming the variable, not a field."""

    @pytest.mark.parametrize(
        ("var", "value"),
        [("KERNEL_PROTECT_METRICS", "public"), ("KERNEL_AUTH_MODE", "ldap")],
    )
    def test_unknown_feature_choice(
        self, monkeypatch: pytest.MonkeyPatch, var: str, value: str
    ) -> None:
        monkeypatch.setenv(var, value)
        with pytest.raises(SettingsError, match=var) as caught:
            KernelSettings()
        assert repr(value) in str(caught.value)

    def test_feature_choice_is_read_from_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KERNEL_PROTECT_METRICS", "internal")
        monkeypatch.setenv("KERNEL_AUTH_MODE", "apikey")
        features = KernelSettings().features
        assert (features.protect_metrics, features.auth_mode) == ("internal", "apikey")

    @pytest.mark.parametrize("build", [KernelSettings, ServiceConfig.from_env])
    def test_debug_maybe(self, monkeypatch: pytest.MonkeyPatch, build: object) -> None:
        monkeypatch.setenv("DEBUG", "maybe")
        with pytest.raises(SettingsError, match=r"DEBUG: .*'maybe'"):
            build()  # type: ignore[operator]

    def test_rate_limit_requests_ten(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RATE_LIMIT_REQUESTS", "ten")
        with pytest.raises(SettingsError, match=r"RATE_LIMIT_REQUESTS: .*'ten'"):
            ServiceConfig.from_env()

    def test_negative_rate_limit_window_names_the_variable(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RATE_LIMIT_WINDOW", "-30")
        with pytest.raises(SettingsError, match="RATE_LIMIT_WINDOW"):
            ServiceConfig.from_env()

    @pytest.mark.parametrize("build", [KernelSettings, RedisSettings])
    def test_malformed_redis_url_from_env_names_the_variable_too(
        self, monkeypatch: pytest.MonkeyPatch, build: object
    ) -> None:
        monkeypatch.setenv("REDIS_URL", "localhost:6379")
        with pytest.raises(SettingsError, match=r"redis\.url \(env REDIS_URL\): expected"):
            build()  # type: ignore[operator]

    def test_a_nested_field_without_a_variable_is_named_alone(self) -> None:
        with pytest.raises(SettingsError, match=r"^http\.gc_threshold: expected") as caught:
            KernelSettings(http={"gc_threshold": "lots"})
        assert "(env" not in str(caught.value)

    @pytest.mark.parametrize("build", [KernelSettings, ServiceConfig.from_env])
    def test_signup_variables_that_disagree_name_both(
        self, monkeypatch: pytest.MonkeyPatch, build: object
    ) -> None:
        monkeypatch.setenv("ALLOW_SELF_SIGNUP", "true")
        monkeypatch.setenv("KERNEL_ALLOW_SIGNUP", "false")
        with pytest.raises(SettingsError) as caught:
            build()  # type: ignore[operator]
        assert "ALLOW_SELF_SIGNUP" in str(caught.value)
        assert "KERNEL_ALLOW_SIGNUP" in str(caught.value)

    def test_signup_variables_that_agree_are_accepted(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ALLOW_SELF_SIGNUP", "yes")
        monkeypatch.setenv("KERNEL_ALLOW_SIGNUP", "1")
        assert KernelSettings().features.allow_self_signup is True
        assert ServiceConfig.from_env().allow_self_signup is True


class TestManifestKeys:
    """An unknown manifest key fails naming the key and the nearest known one."""

    def test_unknown_section(self, tmp_path: Path) -> None:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text("reliabilty:\n  rate_limit_requests: 5\n")
        with pytest.raises(SettingsError, match="'reliabilty'") as caught:
            KernelSettings.from_manifest(manifest)
        assert "did you mean 'reliability'" in str(caught.value)

    def test_unknown_nested_key(self, tmp_path: Path) -> None:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text("redis:\n  key_prefx: svc\n")
        with pytest.raises(SettingsError, match=r"'redis\.key_prefx'") as caught:
            KernelSettings.from_manifest(manifest)
        assert "did you mean 'redis.key_prefix'" in str(caught.value)

    def test_bad_value_in_manifest_names_the_setting(self, tmp_path: Path) -> None:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text("reliability:\n  rate_limit_window_seconds: -1\n")
        with pytest.raises(SettingsError, match=r"reliability\.rate_limit_window_seconds"):
            KernelSettings.from_manifest(manifest)

    @pytest.mark.parametrize(
        ("text", "key", "lines"),
        [
            (
                "observability:\n  log_level: WARNING\nredis:\n  key_prefix: a\n"
                "observability:\n  access_log: false\n",
                "observability",
                "lines 1 and 5",
            ),
            ("redis:\n  key_prefix: a\n  key_prefix: b\n", "key_prefix", "lines 2 and 3"),
        ],
        ids=["section-twice", "key-twice-in-a-section"],
    )
    def test_a_key_written_twice_is_refused(
        self, tmp_path: Path, text: str, key: str, lines: str
    ) -> None:
        """PyYAML keeps the last value: the first block's settings would vanish silently."""
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text(text)
        with pytest.raises(SettingsError, match=f"key '{key}' is written twice") as caught:
            KernelSettings.from_manifest(manifest)
        assert lines in str(caught.value)

    def test_merged_keys_may_be_overridden(self, tmp_path: Path) -> None:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text(
            "redis:\n  <<: {key_prefix: 'a:', max_connections: 5}\n  key_prefix: 'b:'\n"
        )
        redis = KernelSettings.from_manifest(manifest).redis
        assert (redis.key_prefix, redis.max_connections) == ("b:", 5)

    def test_a_single_path_where_a_list_belongs_says_so(self, tmp_path: Path) -> None:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text("observability:\n  request_metrics:\n    exclude_paths: /health\n")
        with pytest.raises(SettingsError, match=r"exclude_paths: expected a list, got '/health'"):
            KernelSettings.from_manifest(manifest)

    def test_missing_manifest(self, tmp_path: Path) -> None:
        with pytest.raises(SettingsError, match="cannot be read"):
            KernelSettings.from_manifest(tmp_path / "absent.yaml")


def test_cors_origins_are_kept_as_browsers_send_them() -> None:
    origins = ("*", "https://App.Example.com:8443", "capacitor://localhost")
    assert HttpSettings(cors_origins=origins).cors_origins == (
        "*",
        "https://app.example.com:8443",
        "capacitor://localhost",
    )


def test_trusted_proxies_take_addresses_ranges_and_the_unix_socket() -> None:
    settings = HttpSettings(trusted_proxies=["10.0.0.1", "fd00::/8", " Unix "])
    assert settings.trusted_proxies == ("10.0.0.1", "fd00::/8", "unix")


def test_allowed_hosts_take_names_wildcards_and_ip_literals() -> None:
    hosts = ("API.example.com", "*.example.com", "127.0.0.1", "[::1]", "localhost")
    assert HttpSettings(allowed_hosts=hosts).allowed_hosts == (
        "api.example.com",
        "*.example.com",
        "127.0.0.1",
        "[::1]",
        "localhost",
    )


def test_a_path_shared_with_a_route_that_is_not_mounted_is_fine() -> None:
    assert FeatureSettings(metrics_path="/audit").metrics_path == "/audit"
