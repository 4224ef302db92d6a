"""The rate limiter: sliding-window limits shared by every process on one backend.

:class:`RateLimiter` turns an identifier into a bounded key (its SHA-256), asks
the backend once per check and applies the failure policy: a backend that fails
or takes longer than ``backend_timeout_seconds`` lets the request through
(``fail_open``, logged and counted in :attr:`RateLimiter.backend_failures`) or
raises :class:`~app_kernel.errors.BackendUnavailable` (503).
See :mod:`app_kernel.reliability.backends.base` for the algorithms and their
accuracy.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from app_kernel._deadline import backend_deadline
from app_kernel._runtime import current_kernel
from app_kernel.errors import BackendUnavailable
from app_kernel.observability.logging import get_logger
from app_kernel.reliability.backends.base import (
    Limit,
    LimitState,
    RateLimitBackend,
    RateLimitResult,
)

if TYPE_CHECKING:
    from app_kernel.observability.metrics import CounterSeries, Metrics
    from app_kernel.settings import ReliabilitySettings

__all__ = ("RateLimiter", "get_rate_limiter", "identifier_key")

_log = get_logger("app_kernel.ratelimit")
DECISIONS = "ratelimit.decisions"
# Windows (ms) in use in this process, so reset() can find an identifier's Redis
# keys without scanning. Windows come from code (defaults, rate_limit(), check()
# arguments), so the set stays small.
_known_windows_ms: set[int] = set()


@functools.lru_cache(maxsize=16_384)
def identifier_key(identifier: str | bytes) -> str:
    """The backend key of ``identifier``: 32 hex digits of its SHA-256.

    Empty, huge or binary identifiers all become a key of the same bounded size.
    The last 16 384 answers are kept: the same callers come back request after
    request.
    """
    if isinstance(identifier, bytes):
        raw = identifier
    else:
        raw = identifier.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


def get_rate_limiter() -> RateLimiter:
    """The current kernel's rate limiter.

    Raises:
        KernelNotInitialized: ``init_app_kernel`` has not been called.
    """
    return current_kernel("get_rate_limiter()").rate_limiter


def _policy_of(identifier: str | bytes) -> str:
    """``global`` or ``route`` for the kernel's own limits, ``custom`` otherwise."""
    text = identifier if isinstance(identifier, str) else ""
    prefix = text.split(":", 1)[0]
    return prefix if prefix in ("global", "route") else "custom"


def _outcome_of(result: RateLimitResult) -> str:
    if result.degraded:
        return "degraded"
    if result.shadowed:
        return "shadowed"
    return "allowed" if result.allowed else "rejected"


class RateLimiter:
    """Sliding-window rate limiter on the kernel's coordination backend.

    Built by hand (``RateLimiter()``) it uses the current kernel's backend and
    settings, looked up on first use; the kernel's own one is
    :func:`get_rate_limiter`.

    Args:
        backend: where hits are counted; the current kernel's when None.
        settings: defaults and failure policy; the current kernel's when None.
    """

    def __init__(
        self,
        backend: RateLimitBackend | None = None,
        settings: ReliabilitySettings | None = None,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._default_limits: tuple[Limit, ...] | None = None
        self.backend_failures = 0
        """Checks the backend failed or timed out on (let through or refused by policy)."""
        self.shadow_refusals = 0
        """Hits shadow mode let through that a limit would have refused."""
        self.metrics: Metrics | None = None
        """Where decisions are counted (``ratelimit_decisions_total``); the kernel sets its own."""
        self._decisions: tuple[Metrics | None, dict[tuple[str, str], CounterSeries]] = (None, {})

    @property
    def backend(self) -> RateLimitBackend:
        """Where hits are counted."""
        if self._backend is None:
            self._backend = current_kernel("RateLimiter()").rate_limiter.backend
        return self._backend

    @property
    def settings(self) -> ReliabilitySettings:
        """Defaults (requests, window, threshold) and failure policy."""
        if self._settings is None:
            self._settings = current_kernel("RateLimiter()").settings.reliability
        return self._settings

    def _limits(
        self, limit: int | None, window: float | None, also: Iterable[tuple[int, float]]
    ) -> tuple[Limit, ...]:
        default = limit is None and window is None and also == ()
        if default and self._default_limits is not None:
            return self._default_limits  # settings are frozen
        settings = self.settings
        limits = (
            Limit(
                settings.rate_limit_requests if limit is None else limit,
                settings.rate_limit_window_seconds if window is None else window,
            ),
            *(Limit(requests, seconds) for requests, seconds in also),
        )
        _known_windows_ms.update(item.window_ms for item in limits)
        if default:
            self._default_limits = limits
        return limits

    @staticmethod
    def remember_windows(limits: Iterable[Limit]) -> None:
        """Note windows in use, so :meth:`reset` clears them too (``rate_limit`` calls this)."""
        _known_windows_ms.update(item.window_ms for item in limits)

    async def hit(
        self,
        identifier: str | bytes,
        limit: int | None = None,
        window: float | None = None,
        *,
        also: Iterable[tuple[int, float]] = (),
        shadow: bool | None = None,
    ) -> RateLimitResult:
        """Count one request and return everything the response headers need.

        All limits (``limit``/``window`` and each ``(requests, window)`` of
        ``also``) are checked together: the hit is recorded on all of them or,
        when one refuses, on none.

        Args:
            identifier: who is limited (any string; hashed into the key).
            limit: requests per window; ``rate_limit_requests`` when None.
            window: window in seconds; ``rate_limit_window_seconds`` when None.
            also: further limits checked in the same step.
            shadow: log and count a refusal but allow; ``shadow_mode`` when None.

        Raises:
            BackendUnavailable: the backend failed and ``fail_open`` is False.
        """
        result = await self._hit(identifier, limit, window, also=also, shadow=shadow)
        if self.metrics is not None:
            self._count(self.metrics, _policy_of(identifier), _outcome_of(result))
        return result

    def _count(self, metrics: Metrics, policy: str, outcome: str) -> None:
        """Count one decision; its series is kept (policies and outcomes are few)."""
        kept = self._decisions
        if kept[0] is not metrics:
            kept = self._decisions = (metrics, {})
        series = kept[1].get((policy, outcome))
        if series is None:
            series = metrics.counter_series(DECISIONS, {"policy": policy, "outcome": outcome})
            if series is None:  # at the series limit: counted as dropped
                return
            kept[1][(policy, outcome)] = series
        series.inc()

    async def _hit(
        self,
        identifier: str | bytes,
        limit: int | None = None,
        window: float | None = None,
        *,
        also: Iterable[tuple[int, float]] = (),
        shadow: bool | None = None,
    ) -> RateLimitResult:
        """The decision of :meth:`hit`, not counted in the metrics."""
        limits = self._limits(limit, window, also)
        settings = self.settings
        key = identifier_key(identifier)
        try:
            async with backend_deadline(settings.backend_timeout_seconds):
                states = await self.backend.hit(key, limits, settings.exact_window_threshold)
        except (BackendUnavailable, TimeoutError) as exc:
            self.backend_failures += 1
            reason = str(exc) or f"no answer within {settings.backend_timeout_seconds}s"
            if not settings.fail_open:
                _log.warning("rate limit backend unavailable: refusing", error=reason)
                msg = f"rate limit backend unavailable: {reason}"
                raise BackendUnavailable(msg) from exc
            _log.warning(
                "rate limit backend unavailable: letting the request through",
                error=reason,
                failures=self.backend_failures,
            )
            return RateLimitResult(
                allowed=True,
                states=tuple(
                    LimitState(item, item.requests, item.window_seconds, 0.0) for item in limits
                ),
                degraded=True,
            )
        allowed = not any(state.exceeded for state in states)
        if not allowed and (settings.shadow_mode if shadow is None else shadow):
            self.shadow_refusals += 1
            _log.warning(
                "rate limit exceeded (shadow mode: allowed)",
                key=key,
                limits=[
                    f"{s.limit.requests}/{s.limit.window_seconds:g}s" for s in states if s.exceeded
                ],
            )
            return RateLimitResult(allowed=True, states=states, shadowed=True)
        return RateLimitResult(allowed=allowed, states=states)

    async def check(
        self, identifier: str | bytes, limit: int | None = None, window: float | None = None
    ) -> bool:
        """Return True and record the request if it is within the limit.

        Args:
            identifier: who is limited.
            limit: requests per window; ``rate_limit_requests`` when None.
            window: window in seconds; ``rate_limit_window_seconds`` when None.
        """
        return (await self.hit(identifier, limit, window, shadow=False)).allowed

    async def get_remaining(
        self, identifier: str | bytes, limit: int | None = None, window: float | None = None
    ) -> int:
        """Requests still allowed in the window now; records nothing.

        Raises:
            BackendUnavailable: the backend failed or did not answer in time.
        """
        limits = self._limits(limit, window, ())
        settings = self.settings
        try:
            async with backend_deadline(settings.backend_timeout_seconds):
                states = await self.backend.peek(
                    identifier_key(identifier), limits, settings.exact_window_threshold
                )
        except TimeoutError as exc:
            msg = f"rate limit backend: no answer within {settings.backend_timeout_seconds}s"
            raise BackendUnavailable(msg) from exc
        return states[0].remaining

    async def reset(self, identifier: str | bytes) -> None:
        """Forget every hit of ``identifier``.

        On Redis this clears the default window and every window this process
        has used or declared (``rate_limit`` dependencies declare theirs).
        """
        settings = self.settings
        windows = {*_known_windows_ms, Limit(1, settings.rate_limit_window_seconds).window_ms}
        await self.backend.reset(identifier_key(identifier), frozenset(windows))
