"""Where the app registers its :class:`ScopeChecker`, and ``check_scope``."""

from __future__ import annotations

from app_kernel.access._ask import DEFAULT_TIMEOUT_SECONDS, ask, validate_checker
from app_kernel.access.errors import AccessNotConfigured
from app_kernel.access.protocols import ScopeChecker

__all__ = ("ScopeAccess", "check_scope", "scope_access")


class ScopeAccess:
    """Holds the app's scope checker and asks it, failing closed.

    Args:
        checker: the app's checker; register it later with :meth:`set_checker`.
        timeout_seconds: how long one checker call may take (None: no limit).
    """

    def __init__(
        self,
        checker: ScopeChecker | None = None,
        *,
        timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._checker: ScopeChecker | None = None
        self.timeout_seconds = timeout_seconds
        if checker is not None:
            self.set_checker(checker, timeout_seconds=timeout_seconds)

    def set_checker(
        self,
        checker: ScopeChecker,
        *,
        timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        """Register the app's checker (at start-up), replacing any earlier one.

        Raises:
            TypeError: ``checker`` has no ``has_scope`` method.
        """
        validate_checker(checker, ("has_scope",), "ScopeChecker")
        self._checker = checker
        self.timeout_seconds = timeout_seconds

    def clear_checker(self) -> None:
        """Forget the checker: every check fails as not configured (for tests)."""
        self._checker = None

    @property
    def is_configured(self) -> bool:
        """True once a checker is registered."""
        return self._checker is not None

    @property
    def checker(self) -> ScopeChecker:
        """The registered checker.

        Raises:
            AccessNotConfigured: no checker was registered.
        """
        if self._checker is None:
            msg = (
                "no ScopeChecker is registered: call "
                "app_kernel.access.scope_access.set_checker(YourChecker()) at start-up"
            )
            raise AccessNotConfigured(msg)
        return self._checker

    async def has_scope(
        self, user_id: str, action: str, resource_type: str, resource_id: str
    ) -> bool:
        """True only when the checker answers exactly ``True``."""
        return await ask(
            self.checker,
            "has_scope",
            (user_id, action, resource_type, resource_id),
            self.timeout_seconds,
        )


scope_access = ScopeAccess()
"""The process's scope access: ``scope_access.set_checker(YourChecker())``."""


async def check_scope(user_id: str, action: str, resource_type: str, resource_id: str) -> bool:
    """Ask the app's scope checker whether the user may act on a resource.

    Returns:
        True only when the checker answered exactly ``True``.

    Raises:
        AccessNotConfigured: no checker is registered (never an open door).
        Exception: whatever the checker raised, including ``TimeoutError``.
    """
    return await scope_access.has_scope(user_id, action, resource_type, resource_id)
