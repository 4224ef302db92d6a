"""Find the kernel a command acts on: an app's (``--app MODULE:APP``) or the environment's."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app_kernel._runtime import kernel_of_app
from app_kernel.kernel import Kernel
from app_kernel.settings import KernelSettings

__all__ = ("load_app", "open_kernel")


def load_app(target: str) -> Any:
    """Import ``MODULE:APP`` from the current directory or the Python path."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        msg = f"expected MODULE:APP such as examples.service:app, got {target!r}"
        raise SystemExit(msg)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        msg = f"module {module_name!r} has no attribute {attribute!r}"
        raise SystemExit(msg) from None


@asynccontextmanager
async def open_kernel(target: str | None) -> AsyncIterator[Kernel]:
    """The app's kernel (its settings and user store), or one built from the
    environment when no app is named; open for the block."""
    kernel = kernel_of_app(load_app(target)) if target else Kernel(KernelSettings())
    await kernel.open()
    try:
        yield kernel
    finally:
        await kernel.close()
