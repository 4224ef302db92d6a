"""What the app implements: its own answers to "is this user allowed?".

The kernel gives these protocols no meaning. A workspace, a role and a scope
are whatever the app says they are; the kernel calls the app's checker and
enforces the answer, denying whenever the answer is not a plain ``True``.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ("ScopeChecker", "WorkspaceChecker")


class WorkspaceChecker(Protocol):
    """**Protocol**: the app's workspace membership rules.

    Register one with ``workspace_access.set_checker(checker)``. Every method
    is a coroutine; arguments are passed by position.
    """

    async def is_member(self, user_id: str, workspace_id: str) -> bool:
        """True when the user belongs to the workspace."""
        ...

    async def is_owner(self, user_id: str, workspace_id: str) -> bool:
        """True when the user owns the workspace (owners pass every role check)."""
        ...

    async def get_role(self, user_id: str, workspace_id: str) -> str | None:
        """The user's role in the workspace, or None when the user has none."""
        ...


class ScopeChecker(Protocol):
    """**Protocol**: the app's permission rules for actions on resources.

    Register one with ``scope_access.set_checker(checker)``.
    """

    async def has_scope(
        self, user_id: str, action: str, resource_type: str, resource_id: str
    ) -> bool:
        """True when the user may perform ``action`` on that resource."""
        ...
