"""Stream leases over HTTP: streamed bodies, 429 over the limit, release on disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Header

from app_kernel import KernelSettings, init_app_kernel
from app_kernel.kernel import Kernel
from app_kernel.settings import RedisSettings, StreamingSettings
from app_kernel.streaming import (
    get_active_streams,
    lease_streaming_response,
    stream_lease,
)

LIMIT = 2


class Probe:
    """What the routes' generators saw."""

    def __init__(self) -> None:
        self.first_chunk_sent = asyncio.Event()
        self.closed = False


def _router(probe: Probe) -> APIRouter:
    router = APIRouter()

    @router.get("/stream")
    async def stream(n: int = 3, x_user: str = Header()) -> Any:
        async def chunks() -> AsyncIterator[str]:
            for i in range(n):
                yield f"chunk-{i};active={await get_active_streams(x_user)}\n"

        return await lease_streaming_response(x_user, chunks())

    @router.get("/events")
    async def events(x_user: str = Header()) -> Any:
        async def chunks() -> AsyncIterator[str]:
            yield "hello"
            yield "two\nlines"
            yield b'{"json": true}'  # type: ignore[misc]

        return await lease_streaming_response(x_user, chunks(), sse=True)

    @router.get("/forever")
    async def forever(x_user: str = Header()) -> Any:
        async def chunks() -> AsyncIterator[str]:
            try:
                yield "first"
                probe.first_chunk_sent.set()
                await asyncio.Event().wait()
                yield "never"
            finally:
                probe.closed = True

        return await lease_streaming_response(x_user, chunks())

    @router.get("/broken")
    async def broken(x_user: str = Header()) -> Any:
        async def chunks() -> AsyncIterator[str]:
            yield "first"
            msg = "the model went away"
            raise RuntimeError(msg)

        return await lease_streaming_response(x_user, chunks())

    @router.get("/hold")
    async def hold(x_user: str = Header()) -> dict[str, int]:
        # The spec's shape: StreamLimitExceeded left to propagate is a 429.
        async with stream_lease(x_user):
            return {"active": await get_active_streams(x_user)}

    return router


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def app(
    tmp_path: Path, coordination_url: str | None, request: pytest.FixtureRequest, probe: Probe
) -> FastAPI:
    redis = RedisSettings()
    if coordination_url is not None:
        prefix: str = request.getfixturevalue("redis_key_prefix")
        redis = RedisSettings(url=coordination_url, key_prefix=prefix)
    settings = KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        redis=redis,
        streaming=StreamingSettings(max_concurrent_per_user=LIMIT, lease_ttl_seconds=30),
    )
    application = FastAPI()
    application.include_router(_router(probe))
    init_app_kernel(application, settings)
    return application


def _kernel(app: FastAPI) -> Kernel:
    kernel: Kernel = app.state.app_kernel
    return kernel


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_streams_chunks_while_holding_a_lease(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async with client.stream("GET", "/stream", headers={"X-User": "u"}) as response:
        chunks = [chunk async for chunk in response.aiter_text()]

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "".join(chunks) == "chunk-0;active=1\nchunk-1;active=1\nchunk-2;active=1\n"
    assert await _kernel(app).stream_leases.get_active_streams("u") == 0


async def test_streams_server_sent_events(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.get("/events", headers={"X-User": "u"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.text == 'data: hello\n\ndata: two\ndata: lines\n\ndata: {"json": true}\n\n'
    assert await _kernel(app).stream_leases.get_active_streams("u") == 0


async def test_over_the_limit_is_a_429_problem_with_retry_after(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    leases = _kernel(app).stream_leases
    for _ in range(LIMIT):
        assert await leases.acquire_stream_lease("u")

    for path in ("/stream", "/events", "/hold"):
        response = await client.get(path, headers={"X-User": "u"})

        assert response.status_code == 429, path
        assert response.headers["content-type"] == "application/problem+json"
        assert 29 <= int(response.headers["retry-after"]) <= 30
        assert response.json()["status"] == 429
        assert "concurrent streams" in response.json()["detail"]
    assert (await client.get("/hold", headers={"X-User": "other"})).json() == {"active": 1}
    assert await leases.get_active_streams("u") == LIMIT
    assert await leases.get_active_streams("other") == 0


def _scope(path: str, user: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"x-user", user.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def test_client_disconnect_mid_stream_releases_the_lease(app: FastAPI, probe: Probe) -> None:
    """Starlette cancels the body when ``receive()`` says ``http.disconnect``."""
    sent: list[MutableMapping[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await probe.first_chunk_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        leases = _kernel(app).stream_leases
        call = asyncio.create_task(app(_scope("/forever", "u"), receive, send))
        await probe.first_chunk_sent.wait()
        assert await leases.get_active_streams("u") == 1

        await asyncio.wait_for(call, 5)

        assert await leases.get_active_streams("u") == 0
        assert probe.closed
        assert sent[0]["status"] == 200
        assert [m["body"] for m in sent[1:]] == [b"first"]


async def test_an_error_mid_stream_releases_the_lease(app: FastAPI) -> None:
    messages: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    async with app.router.lifespan_context(app):
        with pytest.raises(RuntimeError, match="the model went away"):
            await app(_scope("/broken", "u"), receive, send)

        assert await _kernel(app).stream_leases.get_active_streams("u") == 0
        assert messages[1]["body"] == b"first"


async def test_a_lease_backend_outage_is_a_503(tmp_path: Path) -> None:
    settings = KernelSettings(
        debug=True,
        data_dir=str(tmp_path),
        redis=RedisSettings(url="redis://127.0.0.1:1/0"),
        streaming=StreamingSettings(backend_timeout_seconds=0.2),
    )
    application = FastAPI()
    application.include_router(_router(Probe()))
    await asyncio.to_thread(init_app_kernel, application, settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            for path in ("/stream", "/hold"):
                response = await c.get(path, headers={"X-User": "u"})

                assert response.status_code == 503, path
                assert response.headers["content-type"] == "application/problem+json"
                assert response.headers["retry-after"] == "1"
