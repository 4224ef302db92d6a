"""The ``app-kernel`` command, run as a real process: ``check`` and ``serve`` under uvicorn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import app_kernel
from _services import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC_DIR = Path(app_kernel.__file__).resolve().parents[1]
SECRET = "cli-secret-Zq8W3mN5vB7xC9kL2jH4gF6dS1aP0oI"
DB_PASSWORD = "db-pass-7f3a"
REDIS_PASSWORD = "redis-pass-91c2"

_APP_MODULE = """\
from app_kernel import ServiceConfig, create_service

app = create_service("cli_probe", [], config=ServiceConfig.from_env())
"""


def _env(**variables: str) -> dict[str, str]:
    """A minimal environment: only what the child needs plus ``variables``."""
    paths = [str(SRC_DIR), str(REPO_ROOT)]
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(paths), **variables}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cli_probe_app.py").write_text(_APP_MODULE)
    return tmp_path


def _cli(cwd: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``python -m app_kernel ARGS`` in ``cwd`` with the minimal environment."""
    return subprocess.run(
        [sys.executable, "-m", "app_kernel", *args],
        cwd=cwd,
        env=_env(**variables),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _check(app_dir: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return _cli(app_dir, "check", "cli_probe_app:app", **variables)


class TestCheck:
    def test_prints_redacted_settings_and_exits_0(self, app_dir: Path) -> None:
        result = _check(
            app_dir,
            JWT_SECRET=SECRET,
            DATABASE_URL=f"postgresql://svc:{DB_PASSWORD}@db.internal:5432/app",
            REDIS_URL=f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0",
        )
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        for secret in (SECRET, DB_PASSWORD, REDIS_PASSWORD):
            assert secret not in output
        settings = json.loads(result.stdout)
        assert settings["auth"]["token_secret"] == "***"
        assert settings["observability"]["service_name"] == "cli_probe"
        assert settings["database_url"].startswith("postgresql+asyncpg://svc:***@db.internal")
        assert settings["redis"]["url"].startswith("redis://:***@cache.internal")
        assert "settings OK" in result.stderr

    def test_invalid_variable_exits_2_naming_it(self, app_dir: Path) -> None:
        result = _check(app_dir, JWT_SECRET=SECRET, DEBUG="maybe")
        assert result.returncode == 2
        assert "DEBUG" in result.stderr
        assert "'maybe'" in result.stderr
        assert "Traceback" not in result.stderr

    def test_short_secret_outside_debug_exits_2(self, app_dir: Path) -> None:
        result = _check(app_dir, JWT_SECRET="short-secret-9x")
        assert result.returncode == 2
        assert "JWT_SECRET" in result.stderr
        assert "short-secret-9x" not in result.stdout + result.stderr

    def test_debug_mode_needs_no_secret(self, app_dir: Path) -> None:
        result = _check(app_dir, DEBUG="true")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["debug"] is True


def test_serve_runs_the_example_under_uvicorn(tmp_path: Path) -> None:
    """``app-kernel serve examples.service:app`` answers /healthz and /readyz over TCP."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app_kernel",
                "serve",
                "examples.service:app",
                "--port",
                str(port),
            ],
            cwd=tmp_path,
            env=_env(DEBUG="true"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert server.poll() is None, f"the server exited:\n{log_path.read_text()}"
            try:
                health = httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"no answer in 20 s:\n{log_path.read_text()}"
                time.sleep(0.05)
        assert health.status_code == 200
        assert health.headers["x-request-id"]
        # The example's manifest turns request metrics on: their routes exist (admin only).
        assert httpx.get(f"{base}/metrics/requests", timeout=5).status_code == 401
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        names = {check["name"] for check in ready.json()["checks"]}
        assert {"database", "sqlite", "disk_space"} <= names
    finally:
        server.terminate()
        server.wait(timeout=10)
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status reports it.
    log_text = log_path.read_text()
    assert server.returncode in (0, -signal.SIGTERM), log_text
    assert "Application shutdown complete" in log_text
    # The default data folder is relative to the working directory, not the repo.
    assert (tmp_path / ".app_kernel" / "app.db").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["serve", "cli_probe_app:app", "--port", "70000"], "--port"),  # uvicorn bound 4464
        (["serve", "cli_probe_app:app", "--port", "0"], "--port"),
        (["serve", "cli_probe_app:app", "--workers", "0"], "--workers"),  # ran one
        (["worker", "cli_probe_app:app", "--metrics-port", "-1"], "--metrics-port"),
        (["worker", "cli_probe_app:app", "--concurrency", "0"], "--concurrency"),
        (["jobs", "dead", "--limit", "0"], "--limit"),  # SQLite: no limit; Redis: all
        (["jobs", "dead", "--offset", str(2**64)], "--offset"),  # OverflowError
        (["users", "list", "--offset", "-1"], "--offset"),
        (["users", "list", "--limit", "ten"], "--limit"),
    ],
)
def test_numbers_out_of_range_are_refused_before_anything_runs(
    app_dir: Path, args: list[str], option: str
) -> None:
    result = _cli(app_dir, *args, DEBUG="true")
    assert result.returncode == 2
    assert f"argument {option}: expected a whole number" in result.stderr
    assert "Traceback" not in result.stderr


_NOT_APPS = """\
from fastapi import FastAPI

number = 5
plain = FastAPI()
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["check", "not_apps:number"], "(found 'int')"),
        (["check", "not_apps:plain"], "(found 'FastAPI')"),
        (["worker", "not_apps:number"], "not an app built with create_service()"),
        (["serve", "not_apps:number", "--port", "1"], "(found 'int')"),
        (["serve", "no_such_module:app", "--port", "1"], "cannot import 'no_such_module'"),
    ],
)
def test_a_target_that_is_no_kernel_app_is_named_without_a_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """``serve`` refuses before binding the port: uvicorn would serve any object."""
    (tmp_path / "not_apps.py").write_text(_NOT_APPS)
    result = _cli(tmp_path, *args, DEBUG="true")
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_import_error_inside_the_module_keeps_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import no_such_dependency\n")
    result = _cli(tmp_path, "check", "broken_app:app", DEBUG="true")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "No module named 'no_such_dependency'" in result.stderr
