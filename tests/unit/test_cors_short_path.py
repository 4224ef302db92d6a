"""The kernel's CORS middleware answers exactly as Starlette's, short path or not."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.middleware.cors import CORSMiddleware

from _asgi_calls import call_asgi
from app_kernel.types import Message, Receive, Scope, Send
from app_kernel.web.cors import KernelCORSMiddleware

_SETTINGS: dict[str, Any] = {
    "allow_origins": ["https://app.example.com"],
    "allow_methods": ["*"],
    "allow_headers": ["*"],
    "allow_credentials": True,
    "expose_headers": ["X-Request-ID"],
}


def _endpoint(vary: list[bytes]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/plain"), *((b"vary", v) for v in vary)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _answer(middleware: Any, request_headers: list[tuple[bytes, bytes]]) -> Message:
    scope = {"type": "http", "method": "GET", "path": "/", "headers": request_headers}
    return (await call_asgi(middleware, scope))[0]


def _fields(message: Message) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for name, value in message["headers"]:
        fields.setdefault(name.lower(), []).append(value)
    return fields


@pytest.mark.parametrize("vary", [[], [b"Accept-Encoding"], [b"Accept", b"Cookie"]])
@pytest.mark.parametrize(
    "request_headers",
    [
        [(b"host", b"api")],
        [(b"host", b"api"), (b"origin", b"https://app.example.com")],
        [(b"host", b"api"), (b"origin", b"https://evil.example")],
    ],
    ids=["no-origin", "allowed-origin", "other-origin"],
)
async def test_same_answer_as_starlette(
    vary: list[bytes], request_headers: list[tuple[bytes, bytes]]
) -> None:
    ours = await _answer(KernelCORSMiddleware(_endpoint(vary), **_SETTINGS), request_headers)
    theirs = await _answer(CORSMiddleware(_endpoint(vary), **_SETTINGS), request_headers)
    assert ours["status"] == theirs["status"]
    assert _fields(ours) == _fields(theirs)
    assert len(_fields(ours)[b"vary"]) == 1
    assert _fields(ours)[b"vary"][0].endswith(b"Origin")


async def test_preflight_takes_starlettes_path() -> None:
    headers = [
        (b"host", b"api"),
        (b"origin", b"https://app.example.com"),
        (b"access-control-request-method", b"POST"),
    ]
    ours = await _answer(KernelCORSMiddleware(_endpoint([]), **_SETTINGS), headers)
    assert ours["status"] == 200
    assert _fields(ours)[b"access-control-allow-origin"] == [b"https://app.example.com"]
