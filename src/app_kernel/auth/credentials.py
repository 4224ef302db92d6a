"""Read the credential a request carries, refusing ambiguous ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app_kernel.auth.errors import AuthError
from app_kernel.types import Scope

__all__ = ("Credential", "read_credential")

API_KEY_PREFIX = "ak_"


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential taken from the headers.

    Attributes:
        kind: ``bearer`` for a token, ``apikey`` for an API key.
        value: the credential text.
    """

    kind: Literal["bearer", "apikey"]
    value: str


def read_credential(scope: Scope, max_bytes: int) -> Credential | None:
    """The request's credential, from ``Authorization: Bearer`` or ``X-API-Key``.

    Only headers are read: a token in the query string is never looked at. The
    scheme is matched case-insensitively (RFC 9110). Two ``Authorization``
    headers, two ``X-API-Key`` headers, both kinds at once, another scheme, or a
    value over ``max_bytes`` are refused with 401 rather than guessed at.
    """
    authorization: bytes | None = None
    api_key: bytes | None = None
    found = 0
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
            found += 1
        elif name == b"x-api-key":
            api_key = value
            found += 1
    if not found:
        return None
    if found > 1:
        detail = "Send exactly one credential."
        raise AuthError.invalid(detail)
    if api_key is not None:
        if len(api_key) > max_bytes or not api_key:
            raise AuthError.invalid()
        return Credential("apikey", api_key.decode("latin-1").strip())
    raw = authorization or b""
    if len(raw) > max_bytes + 16:
        raise AuthError.invalid()
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        detail = "Use the Bearer scheme."
        raise AuthError.invalid(detail)
    if token.startswith(API_KEY_PREFIX):
        return Credential("apikey", token)
    return Credential("bearer", token)
