"""The access package's exception (its own module so every other one may import it)."""

from __future__ import annotations

from app_kernel.errors import KernelError

__all__ = ("AccessNotConfigured",)


class AccessNotConfigured(KernelError, RuntimeError):
    """An access check ran before the app registered the checker it needs.

    The message names the call to make at start-up, such as
    ``workspace_access.set_checker(...)``.
    """
