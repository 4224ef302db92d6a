"""Access tokens this process has already verified, so a token is checked once, not per request.

Verifying a JWT (base64, JSON, HMAC or signature, claim checks) is the most
expensive step of an authenticated request. A client sends the same access
token on every request until it expires, so the verified claims are kept,
keyed by the SHA-256 of the token (the token text itself is not kept), until
the token's ``exp`` plus the leeway: exactly as long as a fresh verification
would accept it. The signing keys are fixed for the life of the process, so a
token that verified once verifies again; revocation is not cached here (the
caller checks it on every request, through its own short-lived cache).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from app_kernel.auth.models import TokenPayload

__all__ = ("VerifiedTokenCache",)


class VerifiedTokenCache:
    """A bounded LRU of verified token payloads, each valid until a deadline.

    Args:
        max_entries: the most tokens remembered; the least recently used go first.
        leeway_seconds: added to ``exp``, as the decoder does.
    """

    def __init__(self, *, max_entries: int = 10_000, leeway_seconds: float = 0.0) -> None:
        if max_entries <= 0:
            msg = f"max_entries must be positive, got {max_entries}"
            raise ValueError(msg)
        self.max_entries = max_entries
        self.leeway_seconds = leeway_seconds
        self._entries: OrderedDict[bytes, TokenPayload] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str, now: float) -> TokenPayload | None:
        """The payload of ``token`` if it was verified and is still unexpired at ``now``."""
        key = self._key(token)
        payload = self._entries.get(key)
        if payload is None:
            return None
        if payload.exp <= now - self.leeway_seconds:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return payload

    def put(self, token: str, payload: TokenPayload) -> None:
        """Remember that ``token`` verified to ``payload``."""
        key = self._key(token)
        self._entries[key] = payload
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
