"""Where the app registers its :class:`WorkspaceChecker`."""

from __future__ import annotations

from app_kernel.access._ask import DEFAULT_TIMEOUT_SECONDS, answer_of, ask, validate_checker
from app_kernel.access.errors import AccessNotConfigured
from app_kernel.access.protocols import WorkspaceChecker

__all__ = ("WorkspaceAccess", "workspace_access")

_METHODS = ("is_member", "is_owner", "get_role")


class WorkspaceAccess:
    """Holds the app's workspace checker and asks it, failing closed.

    The ``is_member``/``is_owner`` answers count only when they are exactly
    ``True``; ``get_role`` answers count only when they are strings. Exceptions
    raised by the checker propagate to the caller (the ``require_workspace_*``
    dependencies turn them into a logged 500).

    Args:
        checker: the app's checker; register it later with :meth:`set_checker`.
        timeout_seconds: how long one checker call may take (None: no limit).
    """

    def __init__(
        self,
        checker: WorkspaceChecker | None = None,
        *,
        timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._checker: WorkspaceChecker | None = None
        self.timeout_seconds = timeout_seconds
        if checker is not None:
            self.set_checker(checker, timeout_seconds=timeout_seconds)

    def set_checker(
        self,
        checker: WorkspaceChecker,
        *,
        timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        """Register the app's checker (at start-up), replacing any earlier one.

        Raises:
            TypeError: ``checker`` lacks ``is_member``, ``is_owner`` or ``get_role``.
        """
        validate_checker(checker, _METHODS, "WorkspaceChecker")
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
    def checker(self) -> WorkspaceChecker:
        """The registered checker.

        Raises:
            AccessNotConfigured: no checker was registered.
        """
        if self._checker is None:
            msg = (
                "no WorkspaceChecker is registered: call "
                "app_kernel.access.workspace_access.set_checker(YourChecker()) at start-up"
            )
            raise AccessNotConfigured(msg)
        return self._checker

    async def is_member(self, user_id: str, workspace_id: str) -> bool:
        """True only when the checker answers exactly ``True``."""
        return await ask(self.checker, "is_member", (user_id, workspace_id), self.timeout_seconds)

    async def is_owner(self, user_id: str, workspace_id: str) -> bool:
        """True only when the checker answers exactly ``True``."""
        return await ask(self.checker, "is_owner", (user_id, workspace_id), self.timeout_seconds)

    async def get_role(self, user_id: str, workspace_id: str) -> str | None:
        """The checker's answer when it is a string, else None."""
        role = await answer_of(
            self.checker, "get_role", (user_id, workspace_id), self.timeout_seconds
        )
        return role if isinstance(role, str) else None


workspace_access = WorkspaceAccess()
"""The process's workspace access: ``workspace_access.set_checker(YourChecker())``."""
