"""Logging set up for a test: the kernel's configuration into a StringIO, undone after."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from app_kernel.observability.logging import configure_logging


@contextmanager
def configured_logging(**options: Any) -> Iterator[io.StringIO]:
    """Configure logging into a StringIO; undo it (handler, root level) afterwards."""
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configure_logging(stream=out, **options)
    try:
        yield out
    finally:
        for handler in list(root.handlers):
            if handler.get_name() == "app_kernel":
                root.removeHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


@contextmanager
def kernel_handler_alone() -> Iterator[None]:
    """Take pytest's capture handlers (added for each test phase) off the root logger,
    so the kernel's handler is the only destination and hot-path lines take their
    direct path, as in a service."""
    root = logging.getLogger()
    others = [h for h in root.handlers if h.get_name() != "app_kernel"]
    for handler in others:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in others:
            root.addHandler(handler)
