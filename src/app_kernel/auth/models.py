"""The identity of an authenticated caller, and the claims of the kernel's tokens."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ("TokenPayload", "UserIdentity")


def _now() -> datetime:
    return datetime.now(UTC)


class UserIdentity(BaseModel):
    """Who is calling: built from a verified token, API key or external token.

    Attributes:
        id: the user's id in the user store.
        email: the user's email, when known.
        role: ``admin`` or any role name the app uses.
        is_active: False once the user was deactivated.
        created_at: when the user was created (or the identity, when unknown).
        username: the login name, when known.
        auth_method: how the caller proved who it is.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    email: str = ""
    role: str = "user"
    is_active: bool = True
    created_at: datetime = Field(default_factory=_now)
    username: str = ""
    auth_method: Literal["token", "apikey", "external", "none"] = "token"

    @property
    def is_admin(self) -> bool:
        """True when the role is ``admin``."""
        return self.role == "admin"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``created_at`` as an ISO 8601 string."""
        data = self.model_dump(mode="json")
        data["is_admin"] = self.is_admin
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserIdentity:
        """Build from a dict such as a user store record; unknown keys (a
        ``password_hash``, say) are ignored."""
        known = {k: v for k, v in data.items() if k in cls.model_fields and v is not None}
        if "id" in known:
            known["id"] = str(known["id"])
        return cls(**known)


class TokenPayload(BaseModel):
    """The verified claims of a kernel token.

    Attributes:
        sub: the user id.
        typ: ``access`` or ``refresh``; one never stands in for the other.
        jti: unique token id.
        iat: issued at (seconds since the epoch, to the millisecond).
        nbf: not valid before.
        exp: expires at.
        iss: issuer.
        aud: audience.
        role: the user's role when the token was issued (access tokens).
        email: the user's email when the token was issued (access tokens).
        fam: the token family, one per login (refresh tokens).
        kid: the id of the key that signed the token.
    """

    model_config = ConfigDict(frozen=True)

    sub: str
    typ: Literal["access", "refresh"]
    jti: str
    iat: float
    nbf: int
    exp: int
    iss: str
    aud: str | list[str]
    role: str | None = None
    email: str | None = None
    fam: str | None = None
    kid: str | None = None
