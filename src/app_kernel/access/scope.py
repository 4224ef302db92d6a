"""Where the app registers its :class:`ScopeChecker`, and ``check_scope``."""

from __future__ import annotations

from app_kernel.access._ask import ask
from app_kernel.access._slot import CheckerSlot
from app_kernel.access.protocols import ScopeChecker

__all__ = ("ScopeAccess", "check_scope", "scope_access")


class ScopeAccess(CheckerSlot[ScopeChecker]):
    """Holds the app's scope checker and asks it, failing closed.

    Args:
        checker: the app's checker; register it later with :meth:`set_checker`.
        timeout_seconds: how long one checker call may take (None: no limit).
    """

    protocol = "ScopeChecker"
    methods = ("has_scope",)
    registered_at = "app_kernel.access.scope_access"

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
