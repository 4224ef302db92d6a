"""Where the app registers its :class:`WorkspaceChecker`."""

from __future__ import annotations

from app_kernel.access._ask import answer_of, ask
from app_kernel.access._slot import CheckerSlot
from app_kernel.access.protocols import WorkspaceChecker

__all__ = ("WorkspaceAccess", "workspace_access")


class WorkspaceAccess(CheckerSlot[WorkspaceChecker]):
    """Holds the app's workspace checker and asks it, failing closed.

    The ``is_member``/``is_owner`` answers count only when they are exactly
    ``True``; ``get_role`` answers count only when they are strings. Exceptions
    raised by the checker propagate to the caller (the ``require_workspace_*``
    dependencies turn them into a logged 500).

    Args:
        checker: the app's checker; register it later with :meth:`set_checker`.
        timeout_seconds: how long one checker call may take (None: no limit).
    """

    protocol = "WorkspaceChecker"
    methods = ("is_member", "is_owner", "get_role")
    registered_at = "app_kernel.access.workspace_access"

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
