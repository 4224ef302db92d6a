"""Whether a signing secret could have come from a random generator.

Length alone lets through ``"s" * 40`` or a short phrase typed four times. Two
cheap signs of a secret that no generator made, both far from what random
secrets of 32 bytes or more show:

* few bits by its character counts (length times the Shannon entropy of its
  characters): under 64, where 32 random hex digits never come below ~90;
* repeated chunks: under three quarters of its 4-character windows distinct,
  where random secrets have nearly all of them distinct.

Neither proves a secret strong; they refuse the weak ones people paste.
"""

from __future__ import annotations

import math
from collections import Counter

__all__ = ("MIN_SECRET_BYTES", "secret_weakness")

MIN_SECRET_BYTES = 32
"""The shortest signing secret accepted outside debug mode, in UTF-8 bytes."""

_MIN_CHARACTER_BITS = 64
_MIN_DISTINCT_WINDOWS = 0.75
_WINDOW = 4


def _character_bits(secret: str) -> float:
    size = len(secret)
    return sum(count * math.log2(size / count) for count in Counter(secret).values())


def _distinct_windows(secret: str) -> float:
    windows = len(secret) - _WINDOW + 1
    if windows <= 1:
        return 1.0
    return len({secret[i : i + _WINDOW] for i in range(windows)}) / windows


def secret_weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak to sign tokens with, or None when it may be random."""
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return f"is {size} bytes; it must be at least {MIN_SECRET_BYTES} bytes"
    if _character_bits(secret) < _MIN_CHARACTER_BITS:
        return "uses too few different characters to be random"
    if _distinct_windows(secret) < _MIN_DISTINCT_WINDOWS:
        return "repeats itself too much to be random"
    return None
