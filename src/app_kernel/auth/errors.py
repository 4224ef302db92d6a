"""The one exception type the auth layer answers with."""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ("AuthError",)

_INVALID = 'Bearer error="invalid_token"'


class AuthError(HTTPException):
    """An authentication or authorisation failure, rendered as problem+json.

    401 answers carry ``WWW-Authenticate: Bearer`` (RFC 6750), with
    ``error="invalid_token"`` when a credential was presented but refused.
    """

    @classmethod
    def missing(cls) -> AuthError:
        """No credentials at all."""
        return cls(401, "Authentication required.", {"WWW-Authenticate": "Bearer"})

    @classmethod
    def invalid(cls, detail: str = "The credentials are not valid.") -> AuthError:
        """Credentials presented but refused (bad, expired, revoked token or key)."""
        return cls(401, detail, {"WWW-Authenticate": _INVALID})

    @classmethod
    def forbidden(cls, detail: str) -> AuthError:
        """Known caller, not allowed (deactivated, not an admin)."""
        return cls(403, detail)

    @classmethod
    def throttled(cls, retry_after_seconds: float) -> AuthError:
        """Too many failed logins."""
        seconds = max(1, int(retry_after_seconds + 0.999))
        return cls(429, "Too many failed logins; try again later.", {"Retry-After": str(seconds)})
