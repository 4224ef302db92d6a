"""Every import the specification's examples write works as written.

Users paste these lines; a name missing from a package's ``__init__`` breaks
them before any of their code runs.
"""

from __future__ import annotations

import importlib

import pytest

SPEC_IMPORTS = [
    ("app_kernel", "KernelSettings, FeatureSettings, ServiceConfig, JobRegistry"),
    ("app_kernel", "create_service, init_app_kernel, get_current_user, get_job_client"),
    ("app_kernel.access", "require_scope, check_scope, require_workspace_member"),
    ("app_kernel.access", "workspace_access"),
    ("app_kernel.auth", "get_current_user, require_admin, UserIdentity, UserStore"),
    (
        "app_kernel.auth",
        "create_access_token, create_refresh_token, decode_token, hash_password, verify_password",
    ),
    ("app_kernel.jobs", "JobRegistry, JobContext, get_job_client, get_worker_manager"),
    ("app_kernel.observability", "get_logger, log_context, get_metrics, get_audit"),
    ("app_kernel.observability", "RequestMetricsStore"),
    ("app_kernel.reliability", "rate_limit"),
    (
        "app_kernel.settings",
        "RedisSettings, AuthSettings, JobSettings, StreamingSettings, "
        "ObservabilitySettings, ReliabilitySettings",
    ),
    ("app_kernel.streaming", "stream_lease, StreamLimitExceeded"),
    ("app_kernel.streaming", "can_start_stream, get_active_streams"),
]


@pytest.mark.parametrize(("module", "names"), SPEC_IMPORTS)
def test_the_specs_imports_work(module: str, names: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in names.split(", ") if not hasattr(imported, name)]
    assert missing == [], f"from {module} import {names}: missing {missing}"
    assert set(names.split(", ")) <= set(imported.__all__)


def test_the_top_level_dependency_is_the_auth_one() -> None:
    import app_kernel
    import app_kernel.auth

    assert app_kernel.get_current_user is app_kernel.auth.get_current_user
