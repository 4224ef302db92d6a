"""Idempotency-Key over HTTP: replay, 409, 422, 400, releases, scoping, limits, 503."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from _auth_helpers import API_PREFIX, add_user, bearer, collector_paused, login
from _services import free_port, redis_ping
from app_kernel import KernelSettings, init_app_kernel
from app_kernel.reliability import idempotent_route
from app_kernel.settings import AuthSettings, RedisSettings, ReliabilitySettings

__all__ = ("collector_paused",)

KEY = {"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'}


class Counter:
    """Handler runs per route, plus a gate the slow route waits on."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.fail_next = 0

    def hit(self, name: str) -> int:
        self.runs[name] = self.runs.get(name, 0) + 1
        return self.runs[name]


def build(
    tmp_path: Path, redis_url: str | None = None, prefix: str | None = None, **reliability: Any
) -> tuple[FastAPI, Counter]:
    counter = Counter()
    router = APIRouter()
    opt_in = [Depends(idempotent_route())]

    @router.post("/orders", dependencies=opt_in, status_code=201)
    async def orders(request: Request, response: Response) -> dict[str, Any]:
        n = counter.hit("orders")
        response.headers["Location"] = f"/orders/{n}"
        response.set_cookie("session", f"s{n}")
        return {"order": n, "body": (await request.body()).decode()}

    @router.patch("/orders/{order_id}", dependencies=opt_in)
    async def patch_order(order_id: int) -> dict[str, int]:
        return {"order": order_id, "run": counter.hit("patch")}

    @router.post("/slow", dependencies=opt_in)
    async def slow() -> dict[str, int]:
        n = counter.hit("slow")
        counter.started.set()
        await counter.gate.wait()
        return {"run": n}

    @router.post("/flaky", dependencies=opt_in)
    async def flaky() -> Any:
        n = counter.hit("flaky")
        if counter.fail_next == 1:
            counter.fail_next = 0
            msg = "boom"
            raise RuntimeError(msg)
        if counter.fail_next == 2:
            counter.fail_next = 0
            return JSONResponse({"oops": n}, status_code=500)
        if counter.fail_next == 3:
            counter.fail_next = 0
            raise HTTPException(429, "slow down")
        return {"run": n}

    @router.post("/missing", dependencies=opt_in)
    async def missing() -> None:
        counter.hit("missing")
        raise HTTPException(404, "no such thing")

    @router.post("/plain")
    async def plain() -> dict[str, int]:
        return {"run": counter.hit("plain")}

    @router.post("/stream", dependencies=opt_in)
    async def stream() -> StreamingResponse:
        n = counter.hit("stream")

        async def chunks() -> AsyncIterator[bytes]:
            yield b"part1-"
            yield f"run{n}".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @router.post("/big", dependencies=opt_in)
    async def big() -> dict[str, Any]:
        return {"run": counter.hit("big"), "pad": "x" * 2000}

    app = FastAPI()
    app.include_router(router)
    redis = RedisSettings()
    if redis_url is not None:
        redis = RedisSettings(url=redis_url, key_prefix=prefix or "app_kernel:")
    settings = KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        redis=redis,
        reliability=ReliabilitySettings(**reliability),
        auth=AuthSettings(argon2_time_cost=1, argon2_memory_kib=8, revocation_cache_seconds=0),
    )
    init_app_kernel(app, settings, api_prefix=API_PREFIX)
    return app, counter


@pytest.fixture
def reliability() -> dict[str, Any]:
    """ReliabilitySettings overrides; a test parametrizes this name to change them."""
    return {}


@pytest.fixture
def built(
    coordination_url: str | None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    reliability: dict[str, Any],
) -> tuple[FastAPI, Counter]:
    """The test app on each backend (built in a sync fixture: see the loop guard)."""
    prefix = request.getfixturevalue("redis_key_prefix") if coordination_url else None
    return build(tmp_path, coordination_url, prefix, **reliability)


@pytest.fixture
async def http(built: tuple[FastAPI, Counter]) -> AsyncIterator[httpx.AsyncClient]:
    app = built[0]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
def counter(built: tuple[FastAPI, Counter]) -> Counter:
    return built[1]


def _other_ip(app: FastAPI, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_replay_is_identical_and_marked(http: httpx.AsyncClient, counter: Counter) -> None:
    first = await http.post("/orders", content=b'{"x":1}', headers=KEY)
    second = await http.post("/orders", content=b'{"x":1}', headers=KEY)

    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["location"] == first.headers["location"] == "/orders/1"
    assert second.headers["content-type"] == first.headers["content-type"]
    assert "set-cookie" in first.headers
    assert "set-cookie" not in second.headers
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert counter.runs["orders"] == 1


async def test_a_body_cut_short_by_a_disconnect_is_never_stored(
    http: httpx.AsyncClient, built: tuple[FastAPI, Counter]
) -> None:
    """The client left mid-body; its retry with the whole body and the same key
    must run, not meet the truncated request's stored answer (or a 422)."""
    app = built[0]
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"x"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"test"),
            (b"content-length", b"7"),
            (b"idempotency-key", KEY["Idempotency-Key"].encode()),
        ],
        "client": ("10.0.0.1", 1234),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    assert not any(m["type"] == "http.response.start" and m["status"] < 300 for m in sent)

    retry = await http.post("/orders", content=b'{"x":1}', headers=KEY)
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert retry.json()["body"] == '{"x":1}'


async def test_bare_token_key_and_patch(http: httpx.AsyncClient, counter: Counter) -> None:
    headers = {"Idempotency-Key": "bare-key-0001"}
    first = await http.patch("/orders/5", headers=headers)
    second = await http.patch("/orders/5", headers=headers)
    assert first.json() == second.json() == {"order": 5, "run": 1}
    assert counter.runs["patch"] == 1


async def test_no_header_runs_every_time(http: httpx.AsyncClient, counter: Counter) -> None:
    for _ in range(2):
        assert (await http.post("/orders", content=b"a")).status_code == 201
    assert counter.runs["orders"] == 2


async def test_duplicate_while_running_gets_409(http: httpx.AsyncClient, counter: Counter) -> None:
    first = asyncio.create_task(http.post("/slow", headers=KEY))
    await counter.started.wait()

    busy = await http.post("/slow", headers=KEY)
    counter.gate.set()
    done = await first
    replay = await http.post("/slow", headers=KEY)

    assert busy.status_code == 409
    assert busy.headers["content-type"] == "application/problem+json"
    assert int(busy.headers["retry-after"]) >= 1
    assert done.status_code == 200
    assert replay.json() == done.json() == {"run": 1}
    assert counter.runs["slow"] == 1


async def test_concurrent_duplicates_run_once(http: httpx.AsyncClient, counter: Counter) -> None:
    """The handler runs once; the others get 409, or the replay if they arrive late."""

    async def release_soon() -> None:
        await counter.started.wait()
        await asyncio.sleep(0.2)
        counter.gate.set()

    gate = asyncio.create_task(release_soon())
    responses = await asyncio.gather(*(http.post("/slow", headers=KEY) for _ in range(20)))
    await gate

    fresh = [
        r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers
    ]
    others = {(r.status_code, r.headers.get("idempotent-replayed")) for r in responses}
    assert len(fresh) == 1
    assert others <= {(200, None), (409, None), (200, "true")}
    assert sum(r.status_code == 409 for r in responses) >= 10
    assert counter.runs["slow"] == 1


async def test_same_key_other_body_or_route_gets_422(http: httpx.AsyncClient) -> None:
    assert (await http.post("/orders", content=b"one", headers=KEY)).status_code == 201

    other_body = await http.post("/orders", content=b"two", headers=KEY)
    other_route = await http.post("/big", headers=KEY)
    other_query = await http.post("/orders?x=1", content=b"one", headers=KEY)

    for response in (other_body, other_route, other_query):
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b'""',
        b"x" * 256,
        b'"' + b"x" * 256 + b'"',
        b"caf\xc3\xa9",
        b"\x00\x01",
        b'"open',
        b"a b",
    ],
)
async def test_malformed_key_gets_400(
    http: httpx.AsyncClient, counter: Counter, value: bytes
) -> None:
    response = await http.post("/orders", headers=[(b"Idempotency-Key", value)])
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert "orders" not in counter.runs


async def test_two_key_headers_get_400(http: httpx.AsyncClient) -> None:
    headers = [(b"Idempotency-Key", b"aaaa-1"), (b"Idempotency-Key", b"aaaa-2")]
    assert (await http.post("/orders", headers=headers)).status_code == 400


@pytest.mark.parametrize("failure", [1, 2, 3], ids=["exception", "500", "429"])
async def test_failures_release_the_claim(
    http: httpx.AsyncClient, counter: Counter, failure: int
) -> None:
    counter.fail_next = failure
    failed = await http.post("/flaky", headers=KEY)
    retried = await http.post("/flaky", headers=KEY)
    replayed = await http.post("/flaky", headers=KEY)

    assert failed.status_code >= 429
    assert retried.status_code == 200
    assert retried.json() == replayed.json() == {"run": 2}
    assert replayed.headers["idempotent-replayed"] == "true"


async def test_deterministic_4xx_is_stored(http: httpx.AsyncClient, counter: Counter) -> None:
    first = await http.post("/missing", headers=KEY)
    second = await http.post("/missing", headers=KEY)
    assert first.status_code == second.status_code == 404
    assert second.headers["idempotent-replayed"] == "true"
    assert counter.runs["missing"] == 1


async def test_callers_never_share_keys(
    built: tuple[FastAPI, Counter], http: httpx.AsyncClient, counter: Counter
) -> None:
    app = built[0]
    kernel = app.state.app_kernel
    await add_user(kernel, "alice")
    await add_user(kernel, "bob")
    alice = bearer((await login(http, "alice"))["access_token"])
    bob = bearer((await login(http, "bob"))["access_token"])

    runs = []
    for headers in (alice, bob, alice, {}):
        response = await http.post("/orders", content=b"same", headers={**KEY, **headers})
        runs.append(response.json()["order"])
    async with _other_ip(app, "10.9.9.9") as elsewhere:
        response = await elsewhere.post("/orders", content=b"same", headers=KEY)
        runs.append(response.json()["order"])

    assert runs == [1, 2, 1, 3, 4]


@pytest.mark.parametrize("reliability", [{"idempotency_all_routes": True}])
async def test_all_routes_applies_to_undecorated_post(
    http: httpx.AsyncClient, counter: Counter
) -> None:
    first = await http.post("/plain", headers=KEY)
    second = await http.post("/plain", headers=KEY)
    bad = await http.post("/plain", headers={"Idempotency-Key": ""})
    other = await http.post("/plain", content=b"x", headers=KEY)

    assert first.json() == second.json() == {"run": 1}
    assert second.headers["idempotent-replayed"] == "true"
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    assert other.status_code == 422
    assert counter.runs["plain"] == 1


@pytest.mark.parametrize("reliability", [{"idempotency_all_routes": True}])
async def test_all_routes_never_stores_the_kernels_login_answers(
    http: httpx.AsyncClient, built: tuple[FastAPI, Counter]
) -> None:
    """A login answer holds tokens: replaying it for 24 h would hand them out again."""
    app, _ = built
    await add_user(app.state.app_kernel, "carol")
    first = await login(http, "carol", **KEY)
    second = await login(http, "carol", **KEY)
    assert first["access_token"] != second["access_token"]


async def test_opt_in_only_by_default(http: httpx.AsyncClient, counter: Counter) -> None:
    await http.post("/plain", headers=KEY)
    await http.post("/plain", headers=KEY)
    assert counter.runs["plain"] == 2


async def test_streaming_response_is_not_stored(http: httpx.AsyncClient, counter: Counter) -> None:
    first = await http.post("/stream", headers=KEY)
    second = await http.post("/stream", headers=KEY)
    assert first.text == "part1-run1"
    assert second.text == "part1-run2"
    assert "idempotent-replayed" not in second.headers


@pytest.mark.parametrize("reliability", [{"idempotency_max_body_bytes": 1000}])
async def test_over_cap_body_is_not_stored(http: httpx.AsyncClient, counter: Counter) -> None:
    first = await http.post("/big", headers=KEY)
    second = await http.post("/big", headers=KEY)
    assert first.json()["run"] == 1
    assert second.json()["run"] == 2


# --- a Redis that dies --------------------------------------------------------------------


@pytest.fixture
def dying_redis(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A private ``redis-server`` on a free port: (url, kill, restart)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(tmp_path)]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not redis_ping(url, timeout=0.2):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill() -> None:
        procs[-1].kill()
        procs[-1].wait()

    start()
    try:
        yield url, kill, start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.allow_slow_callbacks  # restarting redis-server blocks in the fixture's helpers
async def test_dead_redis_fails_closed_and_recovers(
    tmp_path: Path, dying_redis: tuple[str, Callable[[], None], Callable[[], None]]
) -> None:
    url, kill, restart = dying_redis
    app, counter = build(tmp_path, url, "dying:")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.post("/orders", headers=KEY)).status_code == 201
            await asyncio.to_thread(kill)

            down = await http.post("/orders", headers={"Idempotency-Key": "another-key"})
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/problem+json"
            assert down.headers["retry-after"] == "1"
            without_key = await http.post("/orders")
            assert without_key.status_code == 201

            await asyncio.to_thread(restart)
            back = await http.post("/orders", headers={"Idempotency-Key": "another-key"})
            assert back.status_code == 201
    assert counter.runs["orders"] == 3
