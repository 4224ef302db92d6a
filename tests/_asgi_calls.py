"""Driving a pure ASGI app by hand: one request in, the messages it sent out."""

from __future__ import annotations

from typing import Any

from app_kernel.types import Message, Scope


async def call_asgi(app: Any, scope: Scope) -> list[Message]:
    """Run ``app`` for ``scope`` with an empty request body; every message it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent
