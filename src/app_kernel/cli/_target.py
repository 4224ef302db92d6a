"""Find the kernel a command acts on: an app's (``--app MODULE:APP``) or the environment's."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app_kernel._runtime import kernel_of_app
from app_kernel.errors import KernelNotInitialized
from app_kernel.kernel import Kernel
from app_kernel.settings import KernelSettings

__all__ = ("load_app", "load_kernel", "open_kernel")


def load_app(target: str) -> Any:
    """Import ``MODULE:APP`` from the current directory or the Python path.

    Raises:
        SystemExit: ``target`` is malformed, or names a module or attribute that
            does not exist (an import error inside the module is raised as it is:
            its traceback is the useful part).
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        msg = f"expected MODULE:APP such as examples.service:app, got {target!r}"
        raise SystemExit(msg)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _is_part_of(exc.name, module_name):
            raise  # the module exists; something it imports does not
        msg = (
            f"cannot import {module_name!r} ({exc}): run the command from the folder "
            "that holds it, or put that folder on PYTHONPATH"
        )
        raise SystemExit(msg) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        msg = f"module {module_name!r} has no attribute {attribute!r}"
        raise SystemExit(msg) from None


def _is_part_of(missing: str, module_name: str) -> bool:
    """Whether ``missing`` is ``module_name`` or one of its parent packages."""
    return module_name == missing or module_name.startswith(f"{missing}.")


def load_kernel(target: str) -> Kernel:
    """The kernel of the app ``MODULE:APP`` names.

    Raises:
        SystemExit: as :func:`load_app`, or the object is not an app with a kernel.
    """
    app = load_app(target)
    try:
        return kernel_of_app(app)
    except (AttributeError, KernelNotInitialized):
        msg = (
            f"{target} is not an app built with create_service() or passed to "
            f"init_app_kernel() (found {type(app).__name__!r})"
        )
        raise SystemExit(msg) from None


@asynccontextmanager
async def open_kernel(target: str | None) -> AsyncIterator[Kernel]:
    """The app's kernel (its settings and user store), or one built from the
    environment when no app is named; open for the block."""
    kernel = load_kernel(target) if target else Kernel(KernelSettings())
    await kernel.open()
    try:
        yield kernel
    finally:
        await kernel.close()
