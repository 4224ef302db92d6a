"""The one mutable slot of the process: which kernel the accessors read.

``get_job_client()``, ``get_metrics()``, ``get_audit()`` and the other
module-level accessors of the spec read the kernel set here by
``init_app_kernel``. Request-scoped code reads the kernel of its own app
instead (:func:`kernel_of_scope`, :func:`kernel_of_app`), so several apps in one
process stay apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app_kernel.errors import KernelNotInitialized

if TYPE_CHECKING:
    from app_kernel.kernel import Kernel

__all__ = (
    "ENTRY_KEY",
    "clear_current",
    "current_kernel",
    "kernel_entry",
    "kernel_of_app",
    "kernel_of_scope",
    "set_current",
)

ENTRY_KEY = "app_kernel_entry"
"""``scope["state"]`` key of ``(app, root_path)``: the kernel's app and its root
path, as the kernel's outermost middleware saw the request. Below an app mounted
on it (``app.mount(...)``), ``scope["app"]`` and ``scope["root_path"]`` are the
mounted app's."""

_NOT_READY = (
    "init_app_kernel() has not been called in this process: call "
    "init_app_kernel(app, settings) or create_service(...) before {what}"
)

_current: Kernel | None = None


def set_current(kernel: Kernel) -> None:
    global _current
    _current = kernel


def clear_current(kernel: Kernel) -> None:
    """Forget ``kernel`` if it is the current one (it was closed)."""
    global _current
    if _current is kernel:
        _current = None


def current_kernel(what: str = "using the kernel") -> Kernel:
    """The process's kernel; raises :class:`KernelNotInitialized` naming ``what``."""
    if _current is None:
        raise KernelNotInitialized(_NOT_READY.format(what=what))
    return _current


def kernel_of_app(app: Any) -> Kernel:
    """The kernel mounted on a FastAPI/Starlette app by ``init_app_kernel``."""
    state = app.state
    try:
        # Starlette's State keeps its attributes in this dict; reading it skips
        # State.__getattr__, on a path taken several times per request.
        kernel: Kernel | None = state._state["app_kernel"]
    except (AttributeError, KeyError, TypeError):
        kernel = getattr(state, "app_kernel", None)
    if kernel is None:
        raise KernelNotInitialized(_NOT_READY.format(what="serving this request"))
    return kernel


def kernel_entry(scope: Mapping[str, Any]) -> tuple[Any, str] | None:
    """``(app, root_path)`` of the kernel app as the request entered it (``ENTRY_KEY``),
    or None when no kernel layer noted it."""
    state = scope.get("state")
    return state.get(ENTRY_KEY) if state is not None else None


def kernel_of_scope(scope: Mapping[str, Any]) -> Kernel:
    """The kernel serving a request: its app's, also inside an app mounted on that app."""
    entry = kernel_entry(scope)
    return kernel_of_app(scope["app"] if entry is None else entry[0])
