"""Real Redis and PostgreSQL servers for the test suite.

The root conftest turns these helpers into fixtures. Nothing here fakes a server: a URL
from the environment is checked by connecting, otherwise a throwaway server is started
from the local binaries and stopped again at the end of the session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import redis
from sqlalchemy.engine import make_url

_T = TypeVar("_T")

_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


# --- small utilities -------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_async(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Sync fixtures use this to talk to asyncpg. The worker thread keeps the loop away
    from whatever loop pytest-asyncio has installed in the main thread.
    """

    async def main() -> _T:
        return await factory()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


# --- URLs ------------------------------------------------------------------------------


def sqlalchemy_postgres_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` / ``postgresql+asyncpg://`` -> ``postgresql+asyncpg://``."""
    parsed = make_url(url)
    if parsed.drivername not in _POSTGRES_SCHEMES:
        msg = f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}"
        raise ValueError(msg)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """The plain ``postgresql://`` DSN that ``asyncpg.connect`` understands."""
    parsed = make_url(sqlalchemy_postgres_url(url))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


# --- Redis -----------------------------------------------------------------------------


def redis_ping(url: str, timeout: float = 2.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        ) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def delete_keys_with_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (via SCAN) and return how many went."""
    if not prefix:
        msg = "refusing to delete keys with an empty prefix"
        raise ValueError(msg)
    pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
    deleted = 0
    with redis.Redis.from_url(url) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    return deleted


@contextlib.contextmanager
def throwaway_redis(binary: str, workdir: Path) -> Iterator[str]:
    """Start ``redis-server`` on a free port (no persistence), yield its URL, stop it."""
    last_log = ""
    for _attempt in range(3):  # a free port can be taken between probing and binding
        port = free_port()
        log_path = workdir / f"redis-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                if redis_ping(url, timeout=0.5):
                    yield url
                    return
                time.sleep(0.05)
        finally:
            _stop(proc)
        last_log = log_path.read_text(errors="replace")[-2000:]
    msg = f"redis-server did not come up; last log:\n{last_log}"
    raise RuntimeError(msg)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- PostgreSQL ------------------------------------------------------------------------


async def _postgres_check(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def postgres_error(url: str) -> str | None:
    """None when PostgreSQL at ``url`` accepts a connection, else the error text."""
    try:
        run_async(lambda: _postgres_check(asyncpg_dsn(url)))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def create_database(server_url: str, name: str) -> None:
    """``CREATE DATABASE name`` on the server behind ``server_url``."""
    run_async(lambda: _create_database(asyncpg_dsn(server_url), name))


def drop_database(server_url: str, name: str) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)`` on the server behind ``server_url``."""
    run_async(lambda: _drop_database(asyncpg_dsn(server_url), name))


@dataclass(frozen=True)
class PostgresBinaries:
    initdb: str
    pg_ctl: str


def find_postgres_binaries() -> PostgresBinaries | None:
    """``initdb`` and ``pg_ctl`` from PATH, else from the newest /usr/lib/postgresql/*/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return PostgresBinaries(initdb, pg_ctl)

    def version(bindir: str) -> tuple[int, ...]:
        name = Path(bindir).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        initdb, pg_ctl = f"{bindir}/initdb", f"{bindir}/pg_ctl"
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return PostgresBinaries(initdb, pg_ctl)
    return None


def postgres_run_prefix() -> list[str] | None:
    """Command prefix to run initdb/pg_ctl: empty when not root, ``runuser`` when root.

    None when running as root without ``runuser`` or a ``postgres`` user, because
    initdb refuses to run as root.
    """
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return [runuser, "-u", "postgres", "--"] if runuser else None


@contextlib.contextmanager
def throwaway_postgres(bins: PostgresBinaries, prefix: list[str]) -> Iterator[str]:
    """initdb + pg_ctl a trust-auth cluster in a temp dir on a free port; yield its URL.

    The yielded URL is ``postgresql+asyncpg://postgres@127.0.0.1:PORT/postgres``. The
    unix socket goes into the temp dir too, so nothing under /var/run is needed.
    """
    # Not under pytest's basetemp: that is mode 0700 and root-owned, so the postgres
    # user could not reach it.
    base = Path(tempfile.mkdtemp(prefix="ak-pg-"))
    try:
        if prefix:
            user = pwd.getpwnam("postgres")
            os.chown(base, user.pw_uid, user.pw_gid)
        data, log = base / "data", base / "server.log"
        run = _postgres_runner(prefix, cwd=base)
        run(
            bins.initdb,
            "-D", str(data),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )  # fmt: skip
        port = free_port()
        options = f"-F -p {port} -h 127.0.0.1 -k {base}"
        run(bins.pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(bins.pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _postgres_runner(prefix: list[str], cwd: Path) -> Callable[..., None]:
    def run(*argv: str) -> None:
        result = subprocess.run(
            [*prefix, *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = cwd / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            msg = (
                f"{' '.join(argv[:1])} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{tail}"
            )
            raise RuntimeError(msg)

    return run
