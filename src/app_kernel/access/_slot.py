"""The registration slot both access kinds share: one app checker, set at start-up."""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

from app_kernel.access._ask import DEFAULT_TIMEOUT_SECONDS, validate_checker
from app_kernel.access.errors import AccessNotConfigured

__all__ = ("CheckerSlot",)

C = TypeVar("C")


class CheckerSlot(Generic[C]):
    """Holds the app's checker; asking without one raises, never allows.

    Subclasses name the protocol, its methods and the module-level instance the
    app registers on (for the error message).

    Args:
        checker: the app's checker; register it later with :meth:`set_checker`.
        timeout_seconds: how long one checker call may take (None: no limit).
    """

    protocol: ClassVar[str]
    methods: ClassVar[tuple[str, ...]]
    registered_at: ClassVar[str]

    def __init__(
        self,
        checker: C | None = None,
        *,
        timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._checker: C | None = None
        self.timeout_seconds = timeout_seconds
        if checker is not None:
            self.set_checker(checker, timeout_seconds=timeout_seconds)

    def set_checker(
        self, checker: C, *, timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        """Register the app's checker (at start-up), replacing any earlier one.

        Raises:
            TypeError: ``checker`` lacks one of the protocol's methods.
        """
        validate_checker(checker, self.methods, self.protocol)
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
    def checker(self) -> C:
        """The registered checker.

        Raises:
            AccessNotConfigured: no checker was registered.
        """
        if self._checker is None:
            msg = (
                f"no {self.protocol} is registered: call "
                f"{self.registered_at}.set_checker(YourChecker()) at start-up"
            )
            raise AccessNotConfigured(msg)
        return self._checker
