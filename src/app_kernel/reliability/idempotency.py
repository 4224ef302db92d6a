"""Idempotency: run a request or a job once per key, replay the stored result.

:class:`Idempotency` is the kernel's service (``kernel.idempotency``) on an
:class:`~app_kernel.reliability.backends.idempotency_base.IdempotencyBackend`.
A caller *claims* a key with a fingerprint of what it is about to do; the
first claim wins and holds a random fencing token, which is heartbeated while
the work runs and expires after ``idempotency_lock_ttl_seconds`` if the
process dies. The winner then *completes* (stores the result for
``idempotency_ttl_seconds``) or *releases* the claim so the work may be
retried. Only the token's holder can complete, release or extend a claim.

Every backend call fails closed: an error, or a call slower than
``idempotency_backend_timeout_seconds``, raises
:class:`~app_kernel.errors.BackendUnavailable` (a 503 over HTTP).

HTTP requests use :func:`~app_kernel.reliability.idempotency_http.idempotent_route`;
job handlers and other code use :func:`idempotent`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from app_kernel._deadline import backend_deadline
from app_kernel._runtime import current_kernel
from app_kernel.errors import BackendUnavailable, KernelError
from app_kernel.observability.logging import get_logger
from app_kernel.reliability.backends.idempotency_base import Claim, ClaimState

if TYPE_CHECKING:
    from app_kernel.reliability.backends.idempotency_base import IdempotencyBackend
    from app_kernel.settings import ReliabilitySettings

__all__ = (
    "HeldClaim",
    "Idempotency",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "idempotent",
)

T = TypeVar("T")
_log = get_logger("app_kernel.idempotency")


class IdempotencyInProgress(KernelError):
    """Another run holds the claim on this key; try again later.

    Attributes:
        retry_after_seconds: time left on the other run's claim (0 if unknown).
    """

    def __init__(self, key: str, retry_after_seconds: float) -> None:
        self.retry_after_seconds = retry_after_seconds
        msg = (
            f"idempotency key {key[:64]!r} is being processed by another run; "
            f"retry in {retry_after_seconds:.1f}s"
        )
        super().__init__(msg)


class IdempotencyConflict(KernelError, ValueError):
    """The key was already used for different work (another fingerprint)."""


def storage_key(scope: str, key: str) -> str:
    """The backend's key for ``key`` within ``scope``: a sha256 hex digest.

    Hashing bounds the stored key's length and keeps client bytes out of it.
    """
    data = scope.encode("utf-8", "surrogatepass") + b"\x00" + key.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


class HeldClaim:
    """A claim this process holds: heartbeated until completed or released."""

    def __init__(self, service: Idempotency, key: str, token: str) -> None:
        self.service = service
        self.key = key
        self.token = token
        self._heartbeat: asyncio.Task[None] | None = None
        self.finished = False

    def start_heartbeat(self) -> None:
        """Extend the claim every third of the lock TTL until it ends."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        service = self.service
        ttl = service.lock_ttl_seconds
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                held = await service.call(
                    "heartbeat", service.backend.heartbeat(self.key, self.token, ttl)
                )
            except BackendUnavailable as exc:
                _warn("idempotency heartbeat failed", key=self.key, error=str(exc))
                continue
            if not held:
                _warn("idempotency claim lost before the work ended", key=self.key)
                return

    def _stop(self) -> None:
        self.finished = True
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()

    async def complete(self, record: bytes, ttl_seconds: float | None = None) -> bool:
        """Store ``record`` (for the service's TTL by default); False if the claim was lost."""
        self._stop()
        service = self.service
        ttl = ttl_seconds if ttl_seconds is not None else service.ttl_seconds
        return await service.call(
            "complete", service.backend.complete(self.key, self.token, record, ttl)
        )

    async def release(self) -> bool:
        """Give the claim up so the work may be retried; never raises.

        Runs shielded from cancellation (a client that disconnects must not
        leave the key pending); a failure is logged and the claim then
        expires after the lock TTL.
        """
        self._stop()
        service = self.service
        call = service.call("release", service.backend.release(self.key, self.token))
        try:
            return await asyncio.shield(call)
        except (BackendUnavailable, asyncio.CancelledError) as exc:
            _warn(
                "idempotency release failed; the claim will expire", key=self.key, error=repr(exc)
            )
            return False


class Idempotency:
    """The kernel's idempotency service: ``kernel.idempotency``.

    Args:
        backend: where claims and records live (Redis or SQLite).
        settings: the ``reliability`` section (TTLs, limits, timeout).
    """

    def __init__(self, backend: IdempotencyBackend, settings: ReliabilitySettings) -> None:
        self.backend = backend
        self.settings = settings
        self.ttl_seconds: float = settings.idempotency_ttl_seconds
        self.lock_ttl_seconds: float = settings.idempotency_lock_ttl_seconds
        self.timeout_seconds: float = settings.idempotency_backend_timeout_seconds

    async def call(self, operation: str, coro: Coroutine[Any, Any, T]) -> T:
        """Await a backend call within the timeout; failures become ``BackendUnavailable``."""
        try:
            async with backend_deadline(self.timeout_seconds):
                return await coro
        except TimeoutError as exc:
            msg = f"idempotency {operation} took longer than {self.timeout_seconds}s"
            raise BackendUnavailable(msg) from exc

    async def claim(self, scope: str, key: str, fingerprint: str) -> tuple[Claim, HeldClaim | None]:
        """Claim ``key`` within ``scope`` for work with ``fingerprint``.

        Returns the backend's answer and, when it is ``ACQUIRED``, the held
        claim with its heartbeat running. The caller must complete or release it.

        Raises:
            BackendUnavailable: the backend failed or was too slow.
        """
        stored_key = storage_key(scope, key)
        token = secrets.token_hex(16)
        claim = await self.call(
            "claim", self.backend.claim(stored_key, fingerprint, token, self.lock_ttl_seconds)
        )
        if claim.state is not ClaimState.ACQUIRED:
            return claim, None
        held = HeldClaim(self, stored_key, token)
        held.start_heartbeat()
        return claim, held

    async def run(
        self,
        key: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        scope: str = "default",
        ttl_seconds: float | None = None,
    ) -> Any:
        """Run ``fn()`` once per ``key`` in ``scope``; later calls get its stored result.

        The result must be JSON-serialisable; the value returned on a repeat is
        its JSON round trip (tuples come back as lists). An exception in
        ``fn`` releases the claim, so the next call runs ``fn`` again.

        Raises:
            IdempotencyInProgress: another run holds the claim.
            BackendUnavailable: the backend failed or was too slow.
        """
        claim, held = await self.claim(f"code\x00{scope}", key, "code")
        if claim.state is ClaimState.COMPLETED:
            assert claim.record is not None
            return json.loads(claim.record)
        if claim.state is ClaimState.IN_PROGRESS:
            raise IdempotencyInProgress(key, claim.retry_after_seconds)
        if held is None:  # MISMATCH cannot happen: the fingerprint is constant
            msg = f"idempotency key {key[:64]!r} is used by other work"
            raise IdempotencyConflict(msg)
        try:
            result = await fn()
            record = json.dumps(result, separators=(",", ":")).encode()
        except BaseException:
            await held.release()
            raise
        if not await held.complete(record, ttl_seconds):
            _warn("idempotency claim was lost before the result was stored", key=held.key)
        return result


async def idempotent(
    key: str,
    fn: Callable[[], Awaitable[Any]],
    *,
    scope: str = "default",
    ttl: float | None = None,
) -> Any:
    """Run ``fn()`` once per ``key`` with the current kernel's store.

    For job handlers: the first call runs ``fn`` and stores its JSON-able
    result for ``ttl`` seconds (``idempotency_ttl_seconds`` by default); a
    repeat returns the stored result without running ``fn``.

    Args:
        key: the caller's idempotency key (any string; it is hashed).
        fn: the work, an async callable without arguments.
        scope: namespace of the key, so different jobs never collide.
        ttl: how long the result is kept, in seconds.

    Raises:
        IdempotencyInProgress: another run holds the claim on ``key``.
        BackendUnavailable: the store failed or was too slow.
        KernelNotInitialized: no kernel was built in this process.
    """
    service = current_kernel("calling idempotent()").idempotency
    return await service.run(key, fn, scope=scope, ttl_seconds=ttl)


def _warn(event: str, **fields: Any) -> None:
    _log.warning(event, **fields)
