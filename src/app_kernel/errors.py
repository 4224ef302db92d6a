"""Exceptions raised by app_kernel.

The tree::

    KernelError
    ├── SettingsError (also ValueError)        bad configuration, raised at start-up
    ├── KernelNotInitialized (also RuntimeError) an accessor was used before init
    ├── MissingDependencyError (also ImportError) an optional extra is not installed
    └── BackendUnavailable                     Redis, SQLite or the database failed

    Exception
    └── PermanentError   raised by a job handler: the job is dead, no further attempt

This module imports nothing from app_kernel, so every other module may import it.
"""

from __future__ import annotations

__all__ = (
    "BackendUnavailable",
    "KernelError",
    "KernelNotInitialized",
    "MissingDependencyError",
    "PermanentError",
    "SettingsError",
)


class KernelError(Exception):
    """Base class of every exception app_kernel raises on purpose."""


class SettingsError(KernelError, ValueError):
    """A setting or environment variable has a value the kernel cannot use.

    The message names the setting (``http.cors_origins``) or the variable
    (``REDIS_URL``), the form that was expected and the value received.
    """


class KernelNotInitialized(KernelError, RuntimeError):
    """A process-wide accessor was called before the kernel was built."""


class MissingDependencyError(KernelError, ImportError):
    """A feature needs an optional extra that is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        msg = (
            f"{feature} needs the {package!r} package: "
            f"install it with pip install 'app-kernel[{extra}]'"
        )
        super().__init__(msg)


class BackendUnavailable(KernelError):
    """A coordination or storage backend did not answer in time or failed."""


class PermanentError(Exception):
    """Raised by a job handler when retrying cannot help: the job goes dead at once.

    Defined here, below every layer, so the kernel's own tasks (the request
    metrics store) can raise it; ``app_kernel.jobs`` exports it.
    """
