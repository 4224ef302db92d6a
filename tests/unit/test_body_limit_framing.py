"""The body limit counts exactly the bodies whose size the HTTP framing does not bound."""

from __future__ import annotations

from typing import Any

import pytest

from app_kernel.types import Message, Receive, Scope, Send
from app_kernel.web.body_limit import BodyLimitMiddleware

LIMIT = 10


def _scope(http_version: str, headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "http_version": http_version,
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "headers": [(b"host", b"t"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
        "state": {},
    }


async def _reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers 200 with its size."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _post(scope: Scope, chunks: list[bytes]) -> list[Message]:
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await BodyLimitMiddleware(_reading_app, max_bytes=LIMIT)(scope, receive, send)
    return sent


def _status(sent: list[dict[str, Any]]) -> int:
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("http_version", "headers"),
    [
        ("2", []),  # HTTP/2 streams a body without a length
        ("1.1", [(b"transfer-encoding", b"chunked")]),
        # A length beside Transfer-Encoding bounds nothing: the body is counted.
        ("1.1", [(b"content-length", b"4"), (b"transfer-encoding", b"chunked")]),
        ("1.1", [(b"transfer-encoding", b"chunked"), (b"content-length", b"4")]),
    ],
)
async def test_a_body_the_framing_does_not_bound_is_counted(
    http_version: str, headers: list[tuple[bytes, bytes]]
) -> None:
    sent = await _post(_scope(http_version, headers), [b"x" * 6, b"x" * 6])
    assert _status(sent) == 413


@pytest.mark.parametrize(
    ("http_version", "headers"),
    [
        ("1.1", [(b"content-length", b"10")]),
        ("2", [(b"content-length", b"10")]),
        ("1.1", [(b"transfer-encoding", b"chunked")]),
        ("2", []),
    ],
)
async def test_a_body_within_the_limit_is_read_whole(
    http_version: str, headers: list[tuple[bytes, bytes]]
) -> None:
    sent = await _post(_scope(http_version, headers), [b"y" * 4, b"y" * 6])
    assert _status(sent) == 200
    assert sent[1]["body"] == b"10"


async def test_a_declared_length_over_the_limit_is_refused_before_the_app() -> None:
    sent = await _post(_scope("1.1", [(b"content-length", b"11")]), [b"z" * 11])
    assert _status(sent) == 413
