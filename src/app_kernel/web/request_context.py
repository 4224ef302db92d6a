"""Request id, per-request log context, the access log line and the request observers."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence

from app_kernel._runtime import ENTRY_KEY
from app_kernel.observability.context import request_client_ip, request_id
from app_kernel.observability.logging import HotPathLogger, get_logger
from app_kernel.observability.request_outcome import (
    MAX_ERROR_BODY,
    RequestObserver,
    RequestOutcome,
)
from app_kernel.observability.route_template import full_template
from app_kernel.observability.tracing import reset_trace_id, set_trace_id, trace_id_of
from app_kernel.types import ASGIApp, Message, Receive, Scope, Send
from app_kernel.web.client_ip import ClientIpResolver

__all__ = ("RequestContextMiddleware", "route_template")

_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_access_log = HotPathLogger("app_kernel.access")
_log = get_logger("app_kernel.web")
_ROUTE_KEY = "app_kernel_route"


def route_template(scope: Scope) -> str:
    """The matched route's full template (``/api/v1/widgets/{id}``), or ``__unmatched__``.

    Asked by the access line and both metrics observers, so it is worked out
    once per request (see :func:`~app_kernel.observability.route_template.full_template`).
    """
    route = scope.get("route")
    if route is None:  # unmatched, or a plain Starlette route of an included router
        return full_template(None, scope) or "__unmatched__"
    state = scope.get("state")
    cached = state.get(_ROUTE_KEY) if state is not None else None
    if cached is not None and cached[0] is route:
        return str(cached[1])
    template = full_template(route, scope)
    if template is None:
        template = "__unmatched__"
    if state is not None:
        state[_ROUTE_KEY] = (route, template)
    return template


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_ID.fullmatch(text) else None
    return None


class RequestContextMiddleware:
    """Give every HTTP request an id, bind it to the logs, echo it, log the request.

    A well-formed incoming ``X-Request-ID`` (1 to 128 of ``[A-Za-z0-9._-]``) is
    reused; anything else is replaced by a fresh id, so a client cannot inject
    text into logs through it. The client IP is resolved once here, by the
    trusted-proxy rule, for every later part of the kernel.

    ``observers`` (HTTP metrics, request metrics) are told when each request
    starts and how it ended, from this one layer.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client_ip: ClientIpResolver,
        access_log: bool = True,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        self.app = app
        self.client_ip = client_ip
        self.access_log = access_log
        self.observers = tuple(observers)
        self.keep_error_body = any(observer.wants_error_body for observer in self.observers)
        self._serving = 0  # requests inside this layer now (this process)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fresh = os.urandom(32).hex()  # a new request id and trace id, in one draw
        rid = _incoming_id(scope) or fresh[:32]
        client_ip = self.client_ip(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["client_ip"] = client_ip
        # For code running below an app mounted on this one (see ENTRY_KEY); a
        # kernel app mounted below another kernel app puts its own back after.
        outer_entry = state.get(ENTRY_KEY)
        app = scope.get("app")
        if app is not None:  # set by Starlette before its middleware runs
            state[ENTRY_KEY] = (app, scope.get("root_path", ""))
        header = (b"x-request-id", rid.encode("latin-1"))
        keep_error_body = self.keep_error_body
        status = 500
        error_body: bytearray | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, error_body
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                if keep_error_body and status >= 400 and _is_json(headers):
                    error_body = bytearray()
                message["headers"] = [*headers, header]
            elif error_body is not None and kind == "http.response.body":
                room = MAX_ERROR_BODY - len(error_body)
                if room > 0:
                    error_body += message.get("body", b"")[:room]
            await send(message)

        id_token = request_id.set(rid)
        ip_token = request_client_ip.set(client_ip)
        trace_token = set_trace_id(trace_id_of(scope, fresh[32:]))
        observers = self.observers
        started_at = time.time()
        started = time.perf_counter()
        self._serving += 1
        try:
            for observer in observers:
                try:
                    observer.started(scope)
                except Exception as exc:
                    _observer_failed(observer, exc)
            await self.app(scope, receive, send_with_id)
        finally:
            self._serving -= 1
            seconds = time.perf_counter() - started
            if observers:
                outcome = RequestOutcome(
                    status, seconds, started_at, None if error_body is None else bytes(error_body)
                )
                _tell(observers, scope, outcome)
            if self.access_log:
                _access_log.request(
                    scope["method"],
                    route_template(scope),
                    status,
                    round(seconds * 100_000) / 100,  # round(x, 2) costs more
                )
                if not self._serving:
                    # Access lines are written once per loop pass, for all the
                    # requests that ended in it; the last request in flight
                    # writes them at once, so an idle service logs promptly.
                    _access_log.flush()
            reset_trace_id(trace_token)
            request_client_ip.reset(ip_token)
            request_id.reset(id_token)
            if outer_entry is not None:
                state[ENTRY_KEY] = outer_entry


def _is_json(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return b"json" in value.lower()
    return False


def _tell(observers: Sequence[RequestObserver], scope: Scope, outcome: RequestOutcome) -> None:
    for observer in observers:
        try:
            observer.finished(scope, outcome)
        except Exception as exc:
            _observer_failed(observer, exc)


def _observer_failed(observer: RequestObserver, exc: Exception) -> None:
    """One observer's fault costs neither the other observers nor the client."""
    _log.warning("request observer failed", observer=type(observer).__name__, error=repr(exc))
