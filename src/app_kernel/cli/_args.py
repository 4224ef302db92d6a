"""Argument types for the CLI: whole numbers within bounds, refused by argparse."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from app_kernel.observability.query_params import MAX_OFFSET

__all__ = ("OFFSET", "PORT", "whole_number")


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` taking a whole number from ``low`` to ``high``.

    Out of range, argparse prints the usage and the reason and exits with 2,
    before anything is opened: a port past 65535 was otherwise bound modulo
    65536 by uvicorn, and an offset past 64 bits failed deep in a database.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"expected a whole number, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if not low <= value <= high:
            msg = f"expected a whole number from {low} to {high:,}, got {text}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


PORT = whole_number(1, 65535)
"""A TCP port to listen on."""
OFFSET = whole_number(0, MAX_OFFSET)
"""Where a listing starts."""
