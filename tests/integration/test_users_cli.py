"""The users and api-keys commands, run as a user would: a subprocess on real files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app_kernel import KernelSettings, init_app_kernel
from app_kernel.settings import AuthSettings

REPO = Path(__file__).resolve().parents[2]

APP_MODULE = textwrap.dedent(
    """
    from fastapi import FastAPI
    from app_kernel import KernelSettings, init_app_kernel
    from app_kernel.settings import AuthSettings

    app = FastAPI()
    init_app_kernel(
        app,
        KernelSettings(
            debug=True,
            data_dir={data_dir!r},
            auth=AuthSettings(
                token_secret="s" * 40, argon2_time_cost=1, argon2_memory_kib=8,
                revocation_cache_seconds=0,
            ),
        ),
    )
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(APP_MODULE.format(data_dir=str(tmp_path / "data")))
    return tmp_path


def run(workdir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_", "JWT_", "DEBUG"))}
    env["PYTHONPATH"] = f"{workdir}{os.pathsep}{REPO / 'src'}"
    return subprocess.run(
        [sys.executable, "-m", "app_kernel", *args],
        cwd=workdir,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def login(workdir: Path, username: str, password: str) -> httpx.Response:
    """Log in through the HTTP routes of an app on the same files the CLI wrote."""
    app = FastAPI()
    init_app_kernel(
        app,
        KernelSettings(
            debug=True,
            data_dir=str(workdir / "data"),
            auth=AuthSettings(token_secret="s" * 40, argon2_time_cost=1, argon2_memory_kib=8),
        ),
    )

    async def attempt() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post(
                    "/auth/login", json={"username": username, "password": password}
                )
                await response.aread()
                return response

    return asyncio.run(attempt())


def test_create_first_admin_then_log_in(workdir: Path) -> None:
    created = run(
        workdir,
        "users",
        "--app",
        "cliapp:app",
        "create",
        "Alice",
        "--email",
        "alice@example.com",
        "--admin",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout.strip().splitlines()[-1])
    assert record["role"] == "admin"
    assert "correct horse battery" not in created.stdout + created.stderr

    ok = login(workdir, "alice", "correct horse battery")
    assert ok.status_code == 200
    assert ok.json()["token_type"] == "bearer"
    assert login(workdir, "alice", "wrong password!!").status_code == 401


def test_password_is_never_an_argument(workdir: Path) -> None:
    """There is no --password option: a password on the command line would leak to ps."""
    result = run(workdir, "users", "create", "bob", "--email", "b@x.io", "--password", "pw12345678")
    assert result.returncode != 0
    assert "unrecognized arguments" in result.stderr


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("c@x.io", "short", "at least 8"),
        # The CLI holds emails to the rule of the signup route.
        ("not-an-email", "a long enough password", "an email address reads name@domain"),
    ],
    ids=["weak-password", "malformed-email"],
)
def test_bad_input_is_refused(workdir: Path, email: str, password: str, message: str) -> None:
    result = run(
        workdir,
        *("users", "--app", "cliapp:app", "create", "carol", "--email", email),
        "--password-stdin",
        stdin=f"{password}\n",
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_duplicate_username_is_refused(workdir: Path) -> None:
    args = ("users", "--app", "cliapp:app", "create")
    first = run(
        workdir,
        *args,
        "dave",
        "--email",
        "d@x.io",
        "--password-stdin",
        stdin="a long enough password\n",
    )
    assert first.returncode == 0, first.stderr
    again = run(
        workdir,
        *args,
        "DAVE",
        "--email",
        "d2@x.io",
        "--password-stdin",
        stdin="a long enough password\n",
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_list_set_password_deactivate_activate(workdir: Path) -> None:
    app = ("users", "--app", "cliapp:app")
    assert (
        run(
            workdir,
            *app,
            "create",
            "erin",
            "--email",
            "e@x.io",
            "--password-stdin",
            stdin="first password here\n",
        ).returncode
        == 0
    )

    listed = run(workdir, *app, "list")
    assert listed.returncode == 0, listed.stderr
    users = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert [u["username"] for u in users] == ["erin"]
    assert "password_hash" not in listed.stdout

    changed = run(
        workdir, *app, "set-password", "erin", "--password-stdin", stdin="second password here\n"
    )
    assert changed.returncode == 0, changed.stderr
    assert login(workdir, "erin", "first password here").status_code == 401
    assert login(workdir, "erin", "second password here").status_code == 200

    assert run(workdir, *app, "deactivate", "erin").returncode == 0
    assert login(workdir, "erin", "second password here").status_code == 401
    assert run(workdir, *app, "activate", "erin").returncode == 0
    assert login(workdir, "erin", "second password here").status_code == 200

    missing = run(workdir, *app, "deactivate", "nobody")
    assert missing.returncode == 2
    assert "no user named" in missing.stderr


def test_api_keys_create_list_revoke(workdir: Path) -> None:
    assert (
        run(
            workdir,
            "users",
            "--app",
            "cliapp:app",
            "create",
            "svc",
            "--email",
            "s@x.io",
            "--password-stdin",
            stdin="a long enough password\n",
        ).returncode
        == 0
    )
    keys = ("api-keys", "--app", "cliapp:app")
    created = run(workdir, *keys, "create", "--user", "svc", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout.strip().splitlines()[-1])
    assert key["key"].startswith("ak_")

    listed = run(workdir, *keys, "list")
    assert key["key_id"] in listed.stdout
    assert key["key"] not in listed.stdout

    assert run(workdir, *keys, "revoke", key["key_id"]).returncode == 0
    again = run(workdir, *keys, "revoke", key["key_id"])
    assert again.returncode == 2
