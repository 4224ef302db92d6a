"""Hold a stream lease for exactly as long as a stream runs.

:func:`stream_lease` is an async context manager: it acquires on entry (or
raises :class:`StreamLimitExceeded`), refreshes the lease in the background
every ``lease_refresh_interval_seconds`` (a third of the TTL by default) so a
long stream never loses it, and releases it on every way out: normal exit, an
exception, or cancellation (the release is shielded, so a cancelled task still
frees its slot).

:func:`lease_streaming_response` does the same for a FastAPI route returning a
``StreamingResponse``: the lease is taken before the response is returned, so
a user over the limit gets a 429 up front, and released when the body ends,
fails or the client disconnects (Starlette cancels the body on disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog
from starlette.responses import StreamingResponse

from app_kernel._runtime import current_kernel
from app_kernel.errors import BackendUnavailable
from app_kernel.streaming.errors import StreamLimitExceeded

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from app_kernel.streaming.leases import StreamLeaseLimiter

__all__ = (
    "LeasedStreamingResponse",
    "StreamLease",
    "can_start_stream",
    "format_sse",
    "get_active_streams",
    "lease_streaming_response",
    "stream_lease",
)

_log = structlog.stdlib.get_logger("app_kernel.streaming")
_SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _limiter(what: str) -> StreamLeaseLimiter:
    return current_kernel(what).stream_leases


class StreamLease:
    """One stream's lease; use it through :func:`stream_lease`.

    Attributes:
        user_id: whose stream this is.
        lease_id: the held lease, None before acquiring and after release.
        lost: True once a refresh found the lease expired (the stream no
            longer counts against the limit and should stop).
    """

    def __init__(self, limiter: StreamLeaseLimiter, user_id: str) -> None:
        self.limiter = limiter
        self.user_id = user_id
        self.lease_id: str | None = None
        self.lost = False
        self._keeper: asyncio.Task[None] | None = None
        self._refreshes: set[asyncio.Task[bool]] = set()

    @property
    def is_held(self) -> bool:
        """True between a successful acquire and the release, unless the lease was lost."""
        return self.lease_id is not None and not self.lost

    async def acquire(self, *, keep_alive: bool = True) -> None:
        """Take a lease; with ``keep_alive``, refresh it in the background until release.

        Raises:
            StreamLimitExceeded: the user is at ``max_concurrent_per_user``.
            BackendUnavailable: the lease backend failed or timed out.
        """
        if self.lease_id is not None:
            msg = f"stream lease {self.lease_id} is already held"
            raise RuntimeError(msg)
        attempt = await self.limiter.try_acquire(self.user_id)
        if attempt.lease_id is None:
            raise StreamLimitExceeded(
                attempt.retry_after_seconds, self.limiter.max_concurrent_per_user
            )
        self.lease_id = attempt.lease_id
        self.lost = False
        if keep_alive:
            self.keep_alive()

    def keep_alive(self) -> None:
        """Start refreshing the held lease in the background (once)."""
        if self._keeper is None and self.lease_id is not None:
            self._keeper = asyncio.create_task(
                self._keep_alive(), name=f"stream lease keep-alive {self.lease_id}"
            )

    async def _keep_alive(self) -> None:
        while self.is_held:
            await asyncio.sleep(self.limiter.refresh_interval_seconds)
            try:
                await self._refresh_now()
            except BackendUnavailable as exc:
                # Keep trying: the lease survives an outage shorter than its TTL.
                _log.warning("stream lease refresh failed", error=str(exc))

    async def _refresh_now(self) -> bool:
        lease_id = self.lease_id
        if lease_id is None or self.lost:
            return False
        refreshed = await self.limiter.refresh_stream_lease(self.user_id, lease_id)
        if not refreshed and self.lease_id == lease_id:
            self.lost = True
            _log.warning("stream lease expired while its stream ran", lease_id=lease_id)
        return refreshed

    def refresh(self) -> asyncio.Task[bool]:
        """Refresh the lease now, without waiting.

        Returns:
            A task; ``await lease.refresh()`` gives True if the lease is still
            held, False if it expired or was released (errors are raised to
            whoever awaits it and logged otherwise). Calling it without ``await``
            is fine.
        """
        task = asyncio.create_task(self._refresh_now())
        self._refreshes.add(task)
        task.add_done_callback(self._refresh_done)
        return task

    def _refresh_done(self, task: asyncio.Task[bool]) -> None:
        self._refreshes.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.warning("stream lease refresh failed", error=str(exc))

    async def release(self) -> None:
        """Release the lease (idempotent); it runs to the end even if the caller is cancelled.

        A backend failure is logged, not raised: the lease then expires after its TTL.
        """
        lease_id, self.lease_id = self.lease_id, None
        keeper, self._keeper = self._keeper, None
        if lease_id is None:
            return
        await asyncio.shield(self._release(lease_id, keeper))

    async def _release(self, lease_id: str, keeper: asyncio.Task[None] | None) -> None:
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        try:
            await self.limiter.release_stream_lease(self.user_id, lease_id)
        except BackendUnavailable as exc:
            _log.warning("stream lease release failed; it expires after its TTL", error=str(exc))

    async def __aenter__(self) -> StreamLease:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()


def stream_lease(user_id: str, *, limiter: StreamLeaseLimiter | None = None) -> StreamLease:
    """Hold one of the user's stream slots for the ``async with`` block.

    Example::

        async with stream_lease(user.id) as lease:
            async for chunk in generate():
                ...
                lease.refresh()  # optional: a background task already refreshes

    Args:
        user_id: whose limit the stream counts against.
        limiter: defaults to the kernel's (``init_app_kernel`` must have run).

    Raises (on entering the block):
        StreamLimitExceeded: the user is at ``max_concurrent_per_user`` (HTTP 429).
        BackendUnavailable: the lease backend failed or timed out (HTTP 503).
    """
    return StreamLease(limiter or _limiter("stream_lease()"), user_id)


async def can_start_stream(user_id: str) -> bool:
    """True if the user is below the limit now (a hint: another stream may start first)."""
    return await _limiter("can_start_stream()").can_start_stream(user_id)


async def get_active_streams(user_id: str) -> int:
    """The number of the user's live stream leases, across every server."""
    return await _limiter("get_active_streams()").get_active_streams(user_id)


def format_sse(data: str | bytes) -> bytes:
    """One Server-Sent Event carrying ``data`` (each line as a ``data:`` field)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    lines = _SSE_LINE_BREAK.split(text)
    return "".join(f"data: {line}\n" for line in lines).encode("utf-8") + b"\n"


async def _sse_events(content: AsyncIterable[str | bytes]) -> AsyncIterator[bytes]:
    async for chunk in content:
        yield format_sse(chunk)


async def _aclose(iterable: object) -> None:
    aclose = getattr(iterable, "aclose", None)
    if aclose is not None:
        await aclose()


class LeasedStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that releases its stream lease when it is done.

    Built by :func:`lease_streaming_response`. The lease is refreshed while the
    body is sent and released when sending ends for any reason, and the
    content iterator is closed. A response never sent leaves its lease to
    expire after the TTL.
    """

    def __init__(
        self,
        lease: StreamLease,
        content: AsyncIterable[str | bytes],
        *,
        sse: bool = False,
        **kwargs: Any,
    ) -> None:
        self.lease = lease
        self._source = content
        super().__init__(_sse_events(content) if sse else content, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.lease.keep_alive()
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.shield(self._finish())

    async def _finish(self) -> None:
        try:
            if self.body_iterator is not self._source:
                await _aclose(self.body_iterator)
            await _aclose(self._source)
        finally:
            await self.lease.release()


async def lease_streaming_response(
    user_id: str,
    content: AsyncIterable[str | bytes],
    *,
    sse: bool = False,
    media_type: str | None = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    limiter: StreamLeaseLimiter | None = None,
) -> LeasedStreamingResponse:
    """Stream ``content`` while holding one of the user's stream slots.

    The lease is acquired before this returns, so the route answers 429 up
    front; it is released when the body ends, fails or the client disconnects.

    Args:
        user_id: whose limit the stream counts against.
        content: the chunks (``str`` is sent as UTF-8).
        sse: send each chunk as one Server-Sent Event (``data: ...\\n\\n``).
        media_type: defaults to ``text/event-stream`` with ``sse``, else
            ``text/plain; charset=utf-8``.
        status_code: the response status.
        headers: extra response headers.
        limiter: defaults to the kernel's.

    Raises:
        StreamLimitExceeded: the user is at ``max_concurrent_per_user`` (HTTP 429).
        BackendUnavailable: the lease backend failed or timed out (HTTP 503).
    """
    lease = stream_lease(user_id, limiter=limiter)
    try:
        await lease.acquire(keep_alive=False)
    except BaseException:
        await _aclose(content)
        raise
    all_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"} if sse else {}
    all_headers.update(headers or {})
    if media_type is None:
        media_type = "text/event-stream" if sse else "text/plain; charset=utf-8"
    return LeasedStreamingResponse(
        lease,
        content,
        sse=sse,
        status_code=status_code,
        headers=all_headers,
        media_type=media_type,
    )
