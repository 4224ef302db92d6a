"""Where users come from: the ``UserStore`` protocol the app may implement.

The kernel only calls these methods; it never decides what a user is beyond
an id, a login name, an email, a password hash, a role and an active flag.
A record is a mapping with at least ``id``, ``username``, ``email``,
``password_hash`` and ``role``; ``is_active`` (default True) and
``created_at`` are read when present.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from app_kernel.errors import KernelError

__all__ = (
    "EMAIL_PATTERN",
    "InvalidEmail",
    "InvalidUsername",
    "UserAdminStore",
    "UserRecord",
    "UserStore",
    "UserStoreMissingFeature",
    "check_email",
    "normalise_username",
)

UserRecord = Mapping[str, Any]

_MAX_USERNAME = 150


class InvalidUsername(KernelError, ValueError):
    """A username the kernel refuses (empty, too long, invisible characters)."""


class InvalidEmail(KernelError, ValueError):
    """An email address the kernel refuses (no ``@``, spaces, control characters)."""


EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"
"""What an email address must look like: something, ``@``, something; no spaces or
control characters. :func:`check_email` also refuses invisible characters.
Deliverability is the app's concern."""
_EMAIL = re.compile(EMAIL_PATTERN)
_MAX_EMAIL = 320


def check_email(email: str | None) -> str:
    """``email`` without its edge whitespace, when it has the form of
    :data:`EMAIL_PATTERN` and at most 320 characters; ``""`` when it is empty
    or None, which means the user has no email (as the user stores keep it).

    Raises:
        InvalidEmail: anything else.
    """
    if email is None:
        return ""
    text = email.strip() if isinstance(email, str) else None
    if text == "":
        return ""
    if (
        text is None
        or len(text) > _MAX_EMAIL
        or not _EMAIL.match(text)
        # Invisible (zero-width, direction overrides) and unstorable (lone
        # surrogates) characters, which the pattern's ASCII classes let through.
        or not text.isprintable()
    ):
        msg = (
            "an email address reads name@domain, at most 320 characters, "
            f"without spaces, control or invisible characters; got {email!r:.80}"
        )
        raise InvalidEmail(msg)
    return text


class UserStoreMissingFeature(KernelError):
    """The app's user store lacks a method a kernel feature needs."""

    def __init__(self, feature: str, method: str) -> None:
        msg = (
            f"{feature} needs the user store to implement UserAdminStore.{method}(); "
            "the store passed to init_app_kernel does not"
        )
        super().__init__(msg)


def normalise_username(username: str) -> str:
    """The form usernames are compared in: NFKC, then case-folded, edges trimmed.

    ``Admin``, ``ADMIN`` and the fullwidth form of ``ADMIN`` all become ``admin``, so they
    cannot be registered as different users. Format and control characters
    (zero-width joiners, NUL) are refused rather than silently dropped.

    Raises:
        InvalidUsername: empty, longer than 150 characters, or containing
            control or format characters.
    """
    if not isinstance(username, str):
        msg = "a username must be a string"
        raise InvalidUsername(msg)
    if len(username) > _MAX_USERNAME * 4:
        msg = f"a username has at most {_MAX_USERNAME} characters"
        raise InvalidUsername(msg)
    text = unicodedata.normalize("NFKC", username).strip().casefold()
    if not text:
        msg = "a username cannot be empty"
        raise InvalidUsername(msg)
    if len(text) > _MAX_USERNAME:
        msg = f"a username has at most {_MAX_USERNAME} characters"
        raise InvalidUsername(msg)
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in text):
        msg = "a username cannot contain control or invisible characters"
        raise InvalidUsername(msg)
    return text


@runtime_checkable
class UserStore(Protocol):
    """**Protocol**: the app's users, as the spec defines them."""

    async def get_by_username(self, username: str) -> UserRecord | None:
        """The user whose (normalised) username matches, or None."""

    async def get_by_id(self, user_id: str) -> UserRecord | None:
        """The user with this id, or None."""

    async def create(self, username: str, email: str, password_hash: str) -> UserRecord:
        """Create a user with role ``user``.

        Raises:
            ValueError: the username or email is taken.
        """


@runtime_checkable
class UserAdminStore(UserStore, Protocol):
    """**Protocol**: the extra methods the CLI, password rehash and admin actions need."""

    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[UserRecord]:
        """Users ordered by creation."""

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        """Replace a user's hash; False if the user does not exist."""

    async def set_active(self, user_id: str, active: bool) -> bool:
        """Activate or deactivate; False if the user does not exist."""

    async def set_role(self, user_id: str, role: str) -> bool:
        """Change a user's role; False if the user does not exist."""
