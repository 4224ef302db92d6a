"""Rate limits over HTTP: headers, 429 problems, keys, shadow mode, the global limit, outages."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request

from _app_factory import log_lines
from _auth_helpers import (
    PROBLEM,
    add_user,
    auth_app,
    bearer,
    client,
    collector_paused,
    kernel_settings,
    login,
    running,
)
from _services import free_port, redis_ping
from app_kernel.observability.logging import configure_logging
from app_kernel.reliability import get_rate_limiter, rate_limit
from app_kernel.settings import HttpSettings, KernelSettings, ReliabilitySettings

__all__ = ("collector_paused",)

P = "/api/v1"
POLICY = re.compile(r'^"route";q=3;w=60$')
REMAINING = re.compile(r'^"route";r=(\d+);t=(\d+)$')


def _settings(
    tmp_path: Path, *, coordination_url: str | None = None, **reliability: Any
) -> KernelSettings:
    values: dict[str, Any] = {"backend_timeout_seconds": 2.0}
    values.update(reliability)
    settings = kernel_settings(
        tmp_path,
        coordination_url=coordination_url,
        key_prefix="rl-http:",
        http=HttpSettings(trusted_proxies=("10.9.9.9",)),
    )
    return settings.model_copy(update={"reliability": ReliabilitySettings(**values)})


def _app(settings: KernelSettings) -> FastAPI:
    app = auth_app(settings)

    @app.get(f"{P}/limited", dependencies=[Depends(rate_limit(3, 60))])
    async def limited() -> dict[str, str]:
        return {"ok": "limited"}

    @app.get(f"{P}/other", dependencies=[Depends(rate_limit(3, 60))])
    async def other() -> dict[str, str]:
        return {"ok": "other"}

    @app.get(f"{P}/things/{{thing}}", dependencies=[Depends(rate_limit(3, 60))])
    async def thing(thing: str) -> dict[str, str]:
        return {"ok": thing}

    @app.get(f"{P}/multi", dependencies=[Depends(rate_limit(5, 60, also=((2, 120),)))])
    async def multi() -> dict[str, str]:
        return {"ok": "multi"}

    @app.get(f"{P}/shadow", dependencies=[Depends(rate_limit(1, 60, shadow=True))])
    async def shadow() -> dict[str, str]:
        return {"ok": "shadow"}

    def by_api_key(request: Request, user: Any) -> str:
        return f"api_key:{request.headers.get('x-api-key')}"

    @app.get(f"{P}/keyed", dependencies=[Depends(rate_limit(1, 60, key_func=by_api_key))])
    async def keyed() -> dict[str, str]:
        return {"ok": "keyed"}

    def by_missing_header(request: Request, user: Any) -> Any:
        return request.headers.get("x-tenant")  # None without the header: an app bug

    @app.get(f"{P}/tenant", dependencies=[Depends(rate_limit(5, 60, key_func=by_missing_header))])
    async def tenant() -> dict[str, str]:
        return {"ok": "tenant"}

    # Included routers: FastAPI 0.137+ keeps these routes without the include prefix.
    for prefix in (f"{P}/alpha", f"{P}/beta"):
        listing = APIRouter()

        @listing.get("", dependencies=[Depends(rate_limit(3, 60))])
        async def listed() -> dict[str, str]:
            return {"ok": "listed"}

        app.include_router(listing, prefix=prefix)
    org_items = APIRouter()

    @org_items.get("/items", dependencies=[Depends(rate_limit(3, 60))])
    async def org_item(org: str) -> dict[str, str]:
        return {"ok": org}

    app.include_router(org_items, prefix=f"{P}/orgs/{{org}}")
    return app


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return _app(_settings(tmp_path))


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app), client(app) as http:
        yield http


def _assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["status"] == 429
    assert int(response.headers["retry-after"]) >= 1


async def test_allowed_responses_carry_draft_headers(http: httpx.AsyncClient) -> None:
    for expected in (2, 1, 0):
        response = await http.get(f"{P}/limited")
        assert response.status_code == 200
        assert POLICY.match(response.headers["ratelimit-policy"])
        match = REMAINING.match(response.headers["ratelimit"])
        assert match is not None
        assert int(match[1]) == expected
        assert 1 <= int(match[2]) <= 60


async def test_refused_request_is_a_429_problem_with_retry_after(http: httpx.AsyncClient) -> None:
    for _ in range(3):
        await http.get(f"{P}/limited")
    response = await http.get(f"{P}/limited")
    _assert_429(response)
    assert POLICY.match(response.headers["ratelimit-policy"])
    match = REMAINING.match(response.headers["ratelimit"])
    assert match is not None
    assert match[1] == "0"
    assert int(response.headers["retry-after"]) >= int(match[2])


async def test_routes_never_share_a_counter(http: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await http.get(f"{P}/limited")).status_code == 200
    assert (await http.get(f"{P}/limited")).status_code == 429
    assert (await http.get(f"{P}/other")).status_code == 200
    # One route template is one counter, whatever its path parameters.
    statuses = [(await http.get(f"{P}/things/{n}")).status_code for n in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_included_routes_are_keyed_by_their_whole_template(http: httpx.AsyncClient) -> None:
    # Two routes declared as "" under different include prefixes: two counters.
    for _ in range(3):
        assert (await http.get(f"{P}/alpha")).status_code == 200
    assert (await http.get(f"{P}/alpha")).status_code == 429
    assert (await http.get(f"{P}/beta")).status_code == 200
    # A parameter in the include prefix is part of the template, not of the key.
    statuses = [(await http.get(f"{P}/orgs/org-{n}/items")).status_code for n in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_several_limits_on_one_route(http: httpx.AsyncClient) -> None:
    first = await http.get(f"{P}/multi")
    assert first.headers["ratelimit-policy"] == '"route";q=5;w=60, "route-2";q=2;w=120'
    assert first.headers["ratelimit"].startswith('"route";r=4;')
    assert (await http.get(f"{P}/multi")).status_code == 200
    _assert_429(await http.get(f"{P}/multi"))
    assert await get_rate_limiter().get_remaining("unused", 5, 60) == 5


async def test_custom_key_function(http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{P}/keyed", headers={"x-api-key": "a"})).status_code == 200
    assert (await http.get(f"{P}/keyed", headers={"x-api-key": "a"})).status_code == 429
    assert (await http.get(f"{P}/keyed", headers={"x-api-key": "b"})).status_code == 200


async def test_a_key_function_returning_no_str_is_named_in_the_error(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await http.get(f"{P}/tenant", headers={"x-tenant": "t1"})).status_code == 200

    response = await http.get(f"{P}/tenant")

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "key_func _app.<locals>.by_missing_header returned None" in caplog.text


async def test_ips_are_limited_apart(app: FastAPI) -> None:
    async with running(app), client(app, "10.0.0.1") as one, client(app, "10.0.0.2") as two:
        for _ in range(3):
            assert (await one.get(f"{P}/limited")).status_code == 200
        assert (await one.get(f"{P}/limited")).status_code == 429
        assert (await two.get(f"{P}/limited")).status_code == 200


async def test_an_ipv6_client_is_limited_by_its_64(app: FastAPI) -> None:
    """A new address from the same /64 is the same client; another /64 is not."""
    statuses = []
    async with running(app):
        for address in (
            "2001:db8:7:1::1",
            "2001:db8:7:1::2",
            "2001:db8:7:1:a::3",
            "2001:db8:7:1::4",
        ):
            async with client(app, address) as http:
                statuses.append((await http.get(f"{P}/limited")).status_code)
        async with client(app, "2001:db8:7:2::1") as neighbour:
            other = await neighbour.get(f"{P}/limited")
    assert statuses == [200, 200, 200, 429]
    assert other.status_code == 200


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(app: FastAPI) -> None:
    async with running(app), client(app, "10.0.0.7") as http:
        statuses = [
            (await http.get(f"{P}/limited", headers={"x-forwarded-for": f"1.2.3.{n}"})).status_code
            for n in range(4)
        ]
        assert statuses == [200, 200, 200, 429]


async def test_forwarded_for_from_a_trusted_proxy_is_the_key(app: FastAPI) -> None:
    async with running(app), client(app, "10.9.9.9") as proxy:
        for n in range(4):
            response = await proxy.get(f"{P}/limited", headers={"x-forwarded-for": f"1.2.3.{n}"})
            assert response.status_code == 200


async def test_authenticated_users_are_keyed_by_user(app: FastAPI) -> None:
    async with (
        running(app) as kernel,
        client(app, "10.0.0.1") as one,
        client(app, "10.0.0.2") as two,
    ):
        await add_user(kernel, "rita")
        token = (await login(one, "rita"))["access_token"]
        assert (await one.get(f"{P}/limited", headers=bearer(token))).status_code == 200
        assert (await two.get(f"{P}/limited", headers=bearer(token))).status_code == 200
        assert (await one.get(f"{P}/limited", headers=bearer(token))).status_code == 200
        assert (await two.get(f"{P}/limited", headers=bearer(token))).status_code == 429
        # The same IP without the token has its own counter.
        assert (await one.get(f"{P}/limited")).status_code == 200


async def test_shadow_mode_lets_requests_through_and_logs(app: FastAPI) -> None:
    stream = io.StringIO()
    async with running(app) as kernel, client(app) as http:
        configure_logging(level="INFO", fmt="json", stream=stream)
        statuses = [(await http.get(f"{P}/shadow")).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert kernel.rate_limiter.shadow_refusals == 2
    events = [line["event"] for line in log_lines(stream)]
    assert events.count("rate limit exceeded (shadow mode: allowed)") == 2


# --- the global limit ----------------------------------------------------------------------


@pytest.fixture
def global_app(tmp_path: Path) -> FastAPI:
    settings = _settings(
        tmp_path, global_rate_limit=True, rate_limit_requests=4, rate_limit_window_seconds=60
    )
    return _app(settings)


async def test_global_limit_applies_to_routes(global_app: FastAPI) -> None:
    async with running(global_app), client(global_app) as http:
        responses = [await http.get(f"{P}/optional") for _ in range(5)]
        assert [r.status_code for r in responses] == [200, 200, 200, 200, 429]
        first = responses[0]
        assert first.headers.get_list("ratelimit-policy") == ['"global";q=4;w=60']
        assert re.fullmatch(r'"global";r=3;t=(\d+)', first.headers["ratelimit"])
        assert 0 < int(first.headers["ratelimit"].rpartition("=")[2]) <= 60
        refused = await http.get(f"{P}/optional")
        _assert_429(refused)
        assert refused.headers["ratelimit-policy"] == '"global";q=4;w=60'
        assert refused.headers["ratelimit"].startswith('"global";r=0;t=')


async def test_global_and_route_headers_merge(global_app: FastAPI) -> None:
    async with running(global_app), client(global_app) as http:
        response = await http.get(f"{P}/limited")
        assert response.headers.get_list("ratelimit-policy") == [
            '"global";q=4;w=60, "route";q=3;w=60'
        ]
        assert re.fullmatch(r'"global";r=3;t=\d+, "route";r=2;t=\d+', response.headers["ratelimit"])


async def test_global_limit_skips_health_metrics_and_docs(global_app: FastAPI) -> None:
    async with running(global_app), client(global_app) as http:
        for path in (
            "/healthz",
            "/readyz",
            "/docs",
            "/openapi.json",
            "/docs/static/swagger-ui.css",
        ):
            for _ in range(6):
                response = await http.get(path)
                assert response.status_code != 429, path
                assert "ratelimit" not in response.headers
        assert (await http.get(f"{P}/optional")).status_code == 200


async def test_global_limit_treats_a_bad_credential_as_anonymous(global_app: FastAPI) -> None:
    async with running(global_app), client(global_app) as http:
        response = await http.get(f"{P}/whoami", headers=bearer("not-a-token"))
        assert response.status_code == 401
        assert response.headers["ratelimit"].startswith('"global";r=3;')


# --- a Redis that goes away ----------------------------------------------------------------


class ThrowawayRedis:
    """A private ``redis-server`` that tests may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            if redis_ping(self.url, timeout=0.2):
                return
            subprocess.run(["sleep", "0.02"], check=True)
        msg = "throwaway redis-server did not start"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        pytest.skip("redis-server is not installed")
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _redis_app(tmp_path: Path, server: ThrowawayRedis, **reliability: Any) -> FastAPI:
    return _app(
        _settings(tmp_path, coordination_url=server.url, backend_timeout_seconds=0.2, **reliability)
    )


async def test_dead_redis_fails_open_and_recovers(
    tmp_path: Path, private_redis: ThrowawayRedis
) -> None:
    app = _redis_app(tmp_path, private_redis)
    stream = io.StringIO()
    async with running(app) as kernel, client(app) as http:
        configure_logging(level="INFO", fmt="json", stream=stream)
        assert (await http.get(f"{P}/limited")).status_code == 200
        await asyncio.to_thread(private_redis.stop)
        statuses = [(await http.get(f"{P}/limited")).status_code for _ in range(5)]
        assert statuses == [200] * 5
        assert kernel.rate_limiter.backend_failures == 5
        await asyncio.to_thread(private_redis.start)
        statuses = [(await http.get(f"{P}/limited")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]  # the restarted server starts empty
    events = [line["event"] for line in log_lines(stream)]
    assert "rate limit backend unavailable: letting the request through" in events


async def test_dead_redis_fails_closed_when_asked(
    tmp_path: Path, private_redis: ThrowawayRedis
) -> None:
    app = _redis_app(tmp_path, private_redis, fail_open=False)
    async with running(app) as kernel, client(app) as http:
        assert (await http.get(f"{P}/limited")).status_code == 200
        await asyncio.to_thread(private_redis.stop)
        response = await http.get(f"{P}/limited")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith(PROBLEM)
        assert kernel.rate_limiter.backend_failures == 1


async def test_global_limit_fails_closed_with_a_problem(
    tmp_path: Path, private_redis: ThrowawayRedis
) -> None:
    app = _redis_app(tmp_path, private_redis, fail_open=False, global_rate_limit=True)
    async with running(app), client(app) as http:
        await asyncio.to_thread(private_redis.stop)
        response = await http.get(f"{P}/optional")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["status"] == 503


async def test_scripts_reload_after_the_cache_is_flushed(
    tmp_path: Path, private_redis: ThrowawayRedis
) -> None:
    app = _redis_app(tmp_path, private_redis)
    async with running(app) as kernel, client(app) as http:
        assert (await http.get(f"{P}/limited")).status_code == 200
        assert kernel.redis is not None
        await kernel.redis.script_flush()
        statuses = [(await http.get(f"{P}/limited")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert kernel.rate_limiter.backend_failures == 0
