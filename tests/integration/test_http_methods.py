"""HTTP methods: HEAD on the app's GET routes (the GET's status and headers, no body) and
the `Allow` list of a 405 (RFC 9110 9.3.2 and 15.5.6)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Response
from fastapi.responses import StreamingResponse
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from _app_factory import SECURITY_HEADERS, access_lines, build_app, serve, settings_for
from app_kernel import init_app_kernel
from app_kernel.types import Message


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return build_app(settings_for(tmp_path))


class Stream:
    """A GET route streaming until it is stopped; records how it ended."""

    def __init__(self) -> None:
        self.chunks = 0
        self.closed = asyncio.Event()

    async def body(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.chunks += 1
                yield b"data: tick\n\n"
                await asyncio.sleep(0.01)
        finally:
            self.closed.set()


@pytest.fixture
def stream() -> Stream:
    return Stream()


@pytest.fixture
def streaming_app(tmp_path: Path, stream: Stream) -> FastAPI:
    router = APIRouter()

    @router.get("/events")
    async def events() -> StreamingResponse:
        return StreamingResponse(stream.body(), media_type="text/event-stream")

    @router.get("/custom")
    async def custom_get() -> dict[str, str]:
        return {"via": "get"}

    @router.head("/custom")
    async def custom_head() -> Response:
        return Response(headers={"x-answered-by": "head-route"})

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"plain {request.method}")

    app = FastAPI()

    @app.get("/direct/{n}")
    async def direct(n: int) -> dict[str, int]:
        return {"n": n}

    app.include_router(router, prefix="/api")
    app.router.routes.append(Route("/plain", plain, methods=["GET"]))
    init_app_kernel(app, settings_for(tmp_path))
    return app


async def test_head_on_a_get_route_answers_like_get_without_a_body(app: FastAPI) -> None:
    async with serve(app) as client:
        got = await client.get("/api/v1/items/7")
        head = await client.head("/api/v1/items/7", headers={"X-Request-ID": "head-1"})
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == got.headers["content-length"] != "0"
    assert head.headers["x-request-id"] == "head-1"
    for name in SECURITY_HEADERS:
        assert name in head.headers


async def test_head_keeps_the_get_answer_for_errors(app: FastAPI) -> None:
    """A validation error or HTTPException of the GET is the HEAD's too, minus the body."""
    async with serve(app) as client:
        invalid = await client.head("/api/v1/items/not-a-number")
        teapot = await client.head("/api/v1/teapot")
    assert (invalid.status_code, invalid.content) == (422, b"")
    assert invalid.headers["content-type"] == "application/problem+json"
    assert (teapot.status_code, teapot.headers["x-teapot"]) == (418, "yes")


async def test_head_without_a_get_route_gets_the_routers_answer(app: FastAPI) -> None:
    async with serve(app) as client:
        post_only = await client.head("/api/v1/signup")
        unknown = await client.head("/api/v1/nowhere")
    assert post_only.status_code == 405
    assert post_only.headers["allow"] == "POST"
    assert unknown.status_code == 404


async def test_head_is_logged_as_head_with_the_get_routes_template(
    app: FastAPI, streaming_app: FastAPI
) -> None:
    """Routes of an included router and of the app itself."""
    stream = io.StringIO()
    async with serve(app, log_stream=stream) as client:
        await client.head("/api/v1/items/7")
    async with serve(streaming_app, log_stream=stream) as client:
        await client.head("/direct/7")
    lines = [(line["method"], line["route"], line["status"]) for line in access_lines(stream)]
    assert lines == [("HEAD", "/api/v1/items/{item_id}", 200), ("HEAD", "/direct/{n}", 200)]


async def test_a_route_declaring_head_answers_it_itself(streaming_app: FastAPI) -> None:
    async with serve(streaming_app) as client:
        custom = await client.head("/api/custom")
        plain = await client.head("/plain")
    assert custom.headers["x-answered-by"] == "head-route"
    assert plain.status_code == 200  # Starlette's Route answers HEAD on its own
    assert plain.headers["content-length"] == str(len(b"plain HEAD"))


async def test_head_stops_a_streamed_get_after_the_headers(
    streaming_app: FastAPI, stream: Stream
) -> None:
    async with serve(streaming_app) as client:
        head = await asyncio.wait_for(client.head("/api/events"), timeout=5)
        await asyncio.wait_for(stream.closed.wait(), timeout=5)
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""
    assert stream.chunks <= 2


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_head_stream_stops_while_the_client_stays_connected(
    streaming_app: FastAPI, stream: Stream, spec_version: str
) -> None:
    """A server that never reports a disconnect (the client keeps the connection
    open) must not keep the stream running: ASGI 2.4 servers tell a gone client
    by ``send`` raising, older ones by ``receive``."""
    sent: list[Message] = []
    body_sent = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "HEAD",
        "scheme": "http",
        "path": "/api/events",
        "raw_path": b"/api/events",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    async with streaming_app.router.lifespan_context(streaming_app):
        await asyncio.wait_for(streaming_app(scope, receive, send), timeout=5)
    assert stream.closed.is_set()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert scope["method"] == "HEAD"


async def test_openapi_lists_no_head_operations(app: FastAPI) -> None:
    async with serve(app) as client:
        document = (await client.get("/openapi.json")).json()
    methods = {method for operations in document["paths"].values() for method in operations}
    assert "head" not in methods


@pytest.fixture
def rest_app(tmp_path: Path) -> FastAPI:
    """The usual FastAPI shape: one route per method on the same path."""
    router = APIRouter(prefix="/things")

    @router.get("")
    async def list_things() -> list[int]:
        return []

    @router.post("")
    async def add_thing() -> dict[str, int]:
        return {"id": 1}

    @router.put("/{thing_id}")
    async def replace_thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    @router.delete("/{thing_id}")
    async def delete_thing(thing_id: int) -> None:
        return None

    @router.get("/frozen")
    async def frozen() -> None:
        raise HTTPException(405, "Frozen things cannot change.", headers={"Allow": "GET"})

    app = FastAPI()
    app.include_router(router, prefix="/api")
    init_app_kernel(app, settings_for(tmp_path))
    return app


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/things", "GET, HEAD, POST"),
        ("GET", "/api/things/7", "PUT, DELETE"),
        ("PATCH", "/api/things/7", "PUT, DELETE"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/api/things/frozen", "GET, HEAD, PUT, DELETE"),  # /{thing_id} matches too
    ],
)
async def test_a_405_lists_every_method_of_the_path(
    rest_app: FastAPI, method: str, path: str, allow: str
) -> None:
    """Starlette listed only the first matching route's methods (``PUT /things``
    said ``Allow: GET``); RFC 9110 asks for all the resource supports."""
    async with serve(rest_app) as client:
        response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_endpoints_own_405_keeps_its_allow(rest_app: FastAPI) -> None:
    async with serve(rest_app) as client:
        response = await client.get("/api/things/frozen")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["detail"] == "Frozen things cannot change."
