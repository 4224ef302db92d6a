"""The request-context middleware tells its observers how each request went."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from _asgi_calls import call_asgi
from _log_capture import configured_logging, kernel_handler_alone
from app_kernel.observability.request_outcome import MAX_ERROR_BODY, RequestOutcome
from app_kernel.types import Message, Receive, Scope, Send
from app_kernel.web.client_ip import ClientIpResolver
from app_kernel.web.request_context import RequestContextMiddleware


class Recorder:
    def __init__(self, *, wants_error_body: bool) -> None:
        self.wants_error_body = wants_error_body
        self.started_paths: list[str] = []
        self.outcomes: list[RequestOutcome] = []

    def started(self, scope: Scope) -> None:
        self.started_paths.append(scope["path"])

    def finished(self, scope: Scope, outcome: RequestOutcome) -> None:
        self.outcomes.append(outcome)


class Broken:
    wants_error_body = False

    def started(self, scope: Scope) -> None:
        raise RuntimeError("started broke")

    def finished(self, scope: Scope, outcome: RequestOutcome) -> None:
        raise RuntimeError("finished broke")


def _endpoint(status: int, content_type: bytes, body: bytes, chunks: int = 1) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", content_type)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        size = len(body) // chunks
        for i in range(chunks):
            part = body[i * size : (i + 1) * size if i < chunks - 1 else len(body)]
            await send({"type": "http.response.body", "body": part, "more_body": i < chunks - 1})

    return app


async def _call(middleware: RequestContextMiddleware) -> list[Message]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/things",
        "headers": [(b"host", b"api")],
        "client": ("10.0.0.1", 1234),
    }
    return await call_asgi(middleware, scope)


@pytest.mark.parametrize("wants", [True, False])
async def test_json_error_body_is_kept_only_when_asked(wants: bool) -> None:
    body = json.dumps({"detail": "x" * (MAX_ERROR_BODY * 2)}).encode()
    recorder = Recorder(wants_error_body=wants)
    middleware = RequestContextMiddleware(
        _endpoint(422, b"application/problem+json", body, chunks=3),
        client_ip=ClientIpResolver(()),
        access_log=False,
        observers=[recorder],
    )
    sent = await _call(middleware)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == body  # the client gets it all
    [outcome] = recorder.outcomes
    assert outcome.status == 422
    assert outcome.seconds >= 0
    assert outcome.error_body == (body[:MAX_ERROR_BODY] if wants else None)


async def test_success_and_plain_errors_keep_no_body() -> None:
    recorder = Recorder(wants_error_body=True)
    for status, kind in ((200, b"application/json"), (500, b"text/plain")):
        middleware = RequestContextMiddleware(
            _endpoint(status, kind, b'{"a": 1}'),
            client_ip=ClientIpResolver(()),
            access_log=False,
            observers=[recorder],
        )
        await _call(middleware)
    assert [(o.status, o.error_body) for o in recorder.outcomes] == [(200, None), (500, None)]


async def test_a_failing_observer_costs_neither_the_client_nor_the_others() -> None:
    recorder = Recorder(wants_error_body=False)
    middleware = RequestContextMiddleware(
        _endpoint(200, b"application/json", b"{}"),
        client_ip=ClientIpResolver(()),
        access_log=False,
        observers=[Broken(), recorder],
    )
    sent = await _call(middleware)
    assert sent[0]["status"] == 200
    assert recorder.started_paths == ["/things"]
    assert [o.status for o in recorder.outcomes] == [200]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a StringIO."""
    with configured_logging(level="INFO", fmt="json") as out:
        yield out


def _statuses(out: io.StringIO) -> list[int]:
    return [json.loads(line)["status"] for line in out.getvalue().splitlines()]


async def test_the_access_line_is_written_when_the_service_goes_idle(
    log_stream: io.StringIO,
) -> None:
    """Lines wait for the end of the loop pass, but the last request in flight writes them."""
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        await _endpoint(200 if scope["path"] == "/slow" else 201, b"text/plain", b"ok")(
            scope, receive, send
        )

    middleware = RequestContextMiddleware(slow, client_ip=ClientIpResolver(()))
    with kernel_handler_alone():
        await _check_idle_and_busy(middleware, release, log_stream)


async def _check_idle_and_busy(
    middleware: RequestContextMiddleware, release: asyncio.Event, log_stream: io.StringIO
) -> None:
    await _call(middleware)  # alone: its line is there when the call returns
    assert _statuses(log_stream) == [201]

    async def call(path: str) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "headers": [],
            "client": ("10.0.0.1", 1234),
        }
        await call_asgi(middleware, scope)

    waiting = asyncio.create_task(call("/slow"))
    await asyncio.sleep(0)
    await call("/fast")  # another request is still in flight: queued for the loop pass
    assert _statuses(log_stream) == [201]
    release.set()
    await waiting  # the last one out writes both
    assert _statuses(log_stream) == [201, 201, 200]
