"""Every Redis key the kernel writes is built here.

The form is ``<prefix><area>:{<tag>}:<part>...``. The part in braces is the
Redis Cluster hash tag: keys with the same tag land in the same slot, so a Lua
script touching several of them works on a cluster. Tags made from untrusted
input (user ids, client keys) are hashed when they are long or contain
characters outside ``[A-Za-z0-9._-]``, so a key's length stays bounded and a
brace in the input cannot move a key to another slot.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ("RedisKeys", "safe_tag")

_PLAIN_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")


def safe_tag(value: str) -> str:
    """``value`` itself when short and plain, otherwise a hash of it."""
    if _PLAIN_TAG.fullmatch(value):
        return value
    return "h" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class RedisKeys:
    """Builds the kernel's keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, area: str, tag: str, *parts: str) -> str:
        """``<prefix><area>:{<tag>}:<parts joined by ':'>``."""
        suffix = "".join(f":{part}" for part in parts)
        return f"{self.prefix}{area}:{{{safe_tag(tag)}}}{suffix}"
