"""The ``Idempotency-Key`` request header (IETF draft) on POST and PATCH routes.

Two parts work together:

* :class:`IdempotencyMiddleware`, installed by the kernel innermost, acts only
  on POST and PATCH requests carrying the header. It buffers the request body
  (already bounded by the body limit) to fingerprint it, replays it to the
  app, and watches the response.
* :func:`idempotent_route`, a dependency, takes the claim once the route is
  known and the caller identified, before the handler runs. With
  ``idempotency_all_routes`` the middleware takes it itself, before routing.

The claim is scoped to the caller (the user id, else the client IP) and keyed
by a hash of that scope and the key, so keys never collide between callers.
The fingerprint is sha256 of method, path with query string and body sha256.

Outcomes: the first request runs; its response is stored when it is 2xx or a
deterministic 4xx (400, 403, 404, 410, 422) whose body is one ASGI message of
at most ``idempotency_max_body_bytes``, then replayed to repeats with
``Idempotent-Replayed: true``. Any other outcome releases the claim at once so
the client may retry: an exception, 5xx, 401 (credentials can be fixed), 408,
409, 425, 429, a streamed body (``more_body`` on the first chunk) or an
over-cap body. A repeat while the first runs gets 409 with ``Retry-After``;
the same key for another fingerprint 422; a malformed key 400; a backend
failure 503 (fail closed).

Stored headers are the app's own, minus ``Set-Cookie`` and per-connection
ones; the kernel's outer middleware adds request id and security headers to
each answer, replays included.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Header, HTTPException
from starlette.requests import Request

from app_kernel.errors import BackendUnavailable
from app_kernel.observability.logging import get_logger
from app_kernel.reliability.backends.idempotency_base import ClaimState

if TYPE_CHECKING:
    from app_kernel.reliability.idempotency import HeldClaim, Idempotency
    from app_kernel.types import ASGIApp, Message, Receive, Scope, Send

__all__ = (
    "IDEMPOTENT_METHODS",
    "STORED_STATUSES",
    "IdempotencyMiddleware",
    "idempotent_route",
    "parse_idempotency_key",
)

IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})
STORED_STATUSES = frozenset(range(200, 300)) | {400, 403, 404, 410, 422}
"""Statuses stored for replay: success and client errors a retry cannot change."""

REPLAYED_HEADER = (b"idempotent-replayed", b"true")
_HEADER = b"idempotency-key"
_DROPPED_HEADERS = frozenset(
    {b"set-cookie", b"date", b"server", b"connection", b"keep-alive", b"transfer-encoding"}
)
_STATE_KEY = "app_kernel_idempotency"
_log = get_logger("app_kernel.idempotency")

Identify = Callable[[Request], Awaitable[Any]]


def parse_idempotency_key(raw: bytes, max_length: int) -> str:
    """The key in an ``Idempotency-Key`` header value.

    Accepts the draft's structured-field string (``"8e03978e-..."``, with
    ``\\"`` and ``\\\\`` escapes) and, leniently, a bare token of visible ASCII.

    Raises:
        ValueError: the value is empty, too long, not printable ASCII or a
            malformed sf-string; the message says which.
    """
    if len(raw) > 2 * max_length + 2:
        msg = f"the Idempotency-Key is longer than {max_length} characters"
        raise ValueError(msg)
    text = raw.strip(b" \t")
    if any(byte < 0x20 or byte > 0x7E for byte in text):
        msg = "the Idempotency-Key must be printable ASCII"
        raise ValueError(msg)
    value = text.decode("ascii")
    if value.startswith('"'):
        key = _parse_sf_string(value)
    elif '"' in value or " " in value or "\\" in value:
        msg = 'the Idempotency-Key must be a quoted string ("...") or a token without spaces'
        raise ValueError(msg)
    else:
        key = value
    if not key:
        msg = "the Idempotency-Key is empty"
        raise ValueError(msg)
    if len(key) > max_length:
        msg = f"the Idempotency-Key is longer than {max_length} characters"
        raise ValueError(msg)
    return key


def _parse_sf_string(value: str) -> str:
    chars: list[str] = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == "\\":
            if index + 1 >= len(value) or value[index + 1] not in '"\\':
                break
            chars.append(value[index + 1])
            index += 2
            continue
        if char == '"':
            if index != len(value) - 1:
                break
            return "".join(chars)
        chars.append(char)
        index += 1
    msg = 'the Idempotency-Key is not a valid quoted string ("...")'
    raise ValueError(msg)


class _Replay(Exception):
    """Raised by the dependency to make the middleware replay a stored response."""

    def __init__(self, record: bytes) -> None:
        super().__init__("replay")
        self.record = record


def _encode(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    kept = [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, value in headers
        if name.lower() not in _DROPPED_HEADERS
    ]
    record = {"s": status, "h": kept, "b": base64.b64encode(body).decode("ascii")}
    return json.dumps(record, separators=(",", ":")).encode()


async def _send_record(send: Send, record: bytes) -> None:
    data = json.loads(record)
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in data["h"]]
    headers.append(REPLAYED_HEADER)
    await send({"type": "http.response.start", "status": int(data["s"]), "headers": headers})
    await send({"type": "http.response.body", "body": base64.b64decode(data["b"])})


class _Exchange:
    """One request carrying the header: its fingerprint, claim and TTL."""

    def __init__(
        self, service: Idempotency, identify: Identify, raw_keys: list[bytes], body: bytes
    ) -> None:
        self.service = service
        self.identify = identify
        self.raw_keys = raw_keys
        self.body_hash = hashlib.sha256(body).hexdigest()
        self.ttl_seconds: float | None = None
        self.started = False
        self.held: HeldClaim | None = None

    def _key(self) -> str:
        if len(self.raw_keys) != 1:
            raise HTTPException(400, "Send exactly one Idempotency-Key header.")
        max_length = self.service.settings.idempotency_key_max_length
        try:
            return parse_idempotency_key(self.raw_keys[0], max_length)
        except ValueError as exc:
            raise HTTPException(400, f"Invalid Idempotency-Key: {exc}.") from None

    async def _caller(self, request: Request, *, lenient: bool) -> str:
        try:
            user = await self.identify(request)
        except HTTPException:
            if not lenient:
                raise
            user = None  # refused credentials: the route answers for itself
        if user is not None:
            return f"user:{user.id}"
        scope = request.scope
        ip = (scope.get("state") or {}).get("client_ip")
        if ip is None and scope.get("client"):
            ip = scope["client"][0]
        return f"ip:{ip}"

    async def begin(self, request: Request, *, lenient: bool = False) -> None:
        """Validate the key and claim it; raise to answer instead of the handler.

        Raises:
            HTTPException: 400 bad key, 409 in progress, 422 other fingerprint,
                503 backend unavailable.
            _Replay: a stored response answers this request.
        """
        if self.started:
            return
        self.started = True
        key = self._key()
        caller = await self._caller(request, lenient=lenient)
        scope = request.scope
        target = scope.get("root_path", "") + scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        raw = f"{scope['method']}\x00{target}?{query}\x00{self.body_hash}"
        fingerprint = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
        try:
            claim, held = await self.service.claim(f"http\x00{caller}", key, fingerprint)
        except BackendUnavailable as exc:
            _log.warning("idempotency store unavailable", error=str(exc))
            detail = "The idempotency store is unavailable; try again shortly."
            raise HTTPException(503, detail, headers={"Retry-After": "1"}) from None
        if claim.state is ClaimState.ACQUIRED:
            self.held = held
        elif claim.state is ClaimState.COMPLETED:
            assert claim.record is not None
            raise _Replay(claim.record)
        elif claim.state is ClaimState.IN_PROGRESS:
            retry = str(max(1, math.ceil(claim.retry_after_seconds)))
            detail = "A request with this Idempotency-Key is still being processed."
            raise HTTPException(409, detail, headers={"Retry-After": retry})
        else:
            detail = "This Idempotency-Key was used for a different request."
            raise HTTPException(422, detail)


def idempotent_route(*, ttl_seconds: float | None = None) -> Callable[..., Awaitable[None]]:
    """A dependency making a POST or PATCH route honour ``Idempotency-Key``.

    Use as ``@router.post("/orders", dependencies=[Depends(idempotent_route())])``.
    Requests without the header, and other methods, are untouched.

    Args:
        ttl_seconds: how long this route's responses are replayed;
            ``idempotency_ttl_seconds`` by default.
    """

    async def idempotency_key(
        request: Request,
        idempotency_key: Annotated[  # read from the scope; declared for OpenAPI
            str | None,
            Header(
                alias="Idempotency-Key",
                description='Repeat-safe key, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324".',
            ),
        ] = None,
    ) -> None:
        exchange = (request.scope.get("state") or {}).get(_STATE_KEY)
        if not isinstance(exchange, _Exchange):
            return
        if ttl_seconds is not None:
            exchange.ttl_seconds = ttl_seconds
        await exchange.begin(request)

    return idempotency_key


class IdempotencyMiddleware:
    """Pure ASGI middleware completing idempotent requests (see the module docstring).

    Args:
        app: the inner ASGI app.
        service: the kernel's idempotency service.
        identify: resolves the caller of a request (``kernel.optional_user``).
        exempt_prefixes: paths never handled (the kernel's auth routes: a login
            answer holds tokens, which must not be stored and replayed).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: Idempotency,
        identify: Identify,
        exempt_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.service = service
        self.identify = identify
        self.exempt_prefixes = exempt_prefixes
        self.all_routes = service.settings.idempotency_all_routes
        self.max_body_bytes = service.settings.idempotency_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in IDEMPOTENT_METHODS:
            await self.app(scope, receive, send)
            return
        raw_keys = [value for name, value in scope["headers"] if name == _HEADER]
        if not raw_keys or (
            self.exempt_prefixes and scope["path"].startswith(self.exempt_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if messages[-1]["type"] != "http.request":
            # The client left before its body ended: the app gets what came, as it
            # would without the header, and nothing is claimed or stored.
            await self.app(scope, _replaying(messages, receive), send)
            return
        exchange = _Exchange(self.service, self.identify, raw_keys, bytes(body))
        scope.setdefault("state", {})[_STATE_KEY] = exchange
        buffered_receive = _replaying(
            [{"type": "http.request", "body": bytes(body), "more_body": False}], receive
        )

        try:
            if self.all_routes:
                try:
                    await exchange.begin(Request(scope), lenient=True)
                except HTTPException as exc:
                    await _send_problem(scope, send, exc)
                    return
            await self.app(scope, buffered_receive, self._watch(exchange, send))
        except _Replay as replayed:
            await _send_record(send, replayed.record)
        finally:
            held = exchange.held
            if held is not None and not held.finished:
                await held.release()

    def _watch(self, exchange: _Exchange, send: Send) -> Send:
        start: Message | None = None
        decided = False

        async def watching_send(message: Message) -> None:
            nonlocal start, decided
            held = exchange.held
            if held is None or decided:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                return
            decided = True
            if start is None:  # not an HTTP response we understand
                await held.release()
                await send(message)
                return
            status = int(start["status"])
            body = message.get("body", b"") if message["type"] == "http.response.body" else None
            if (
                body is not None
                and not message.get("more_body", False)
                and status in STORED_STATUSES
                and len(body) <= self.max_body_bytes
            ):
                record = _encode(status, list(start.get("headers", [])), body)
                try:
                    if not await held.complete(record, exchange.ttl_seconds):
                        _log.warning("idempotency claim lost before the response was stored")
                except BackendUnavailable as exc:
                    # The work is done: answer anyway; the claim expires on its own.
                    _log.warning("idempotency response not stored", error=str(exc))
            else:
                await held.release()
            await send(start)
            await send(message)

        return watching_send


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` answering ``messages`` first, in order."""
    pending = list(messages)

    async def replaying_receive() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replaying_receive


async def _send_problem(scope: Scope, send: Send, exc: HTTPException) -> None:
    """An RFC 9457 problem from outside FastAPI's handlers (all-routes mode)."""
    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "Error"
    problem = {
        "type": "about:blank",
        "title": title,
        "status": exc.status_code,
        "detail": exc.detail,
        "request_id": (scope.get("state") or {}).get("request_id"),
    }
    body = json.dumps(problem).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
