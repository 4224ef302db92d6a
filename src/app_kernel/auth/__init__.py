"""Authentication: who is calling. Tokens, passwords, API keys, user stores."""

from app_kernel.auth.deps import get_current_user, get_optional_user, require_admin
from app_kernel.auth.models import TokenPayload, UserIdentity
from app_kernel.auth.passwords import hash_password, verify_password
from app_kernel.auth.store import UserAdminStore, UserStore, normalise_username
from app_kernel.auth.tokens import (
    InvalidTokenError,
    create_access_token,
    create_refresh_token,
    decode_token,
)

__all__ = (
    "InvalidTokenError",
    "TokenPayload",
    "UserAdminStore",
    "UserIdentity",
    "UserStore",
    "create_access_token",
    "create_refresh_token",
    "decode_token",
    "get_current_user",
    "get_optional_user",
    "hash_password",
    "normalise_username",
    "require_admin",
    "verify_password",
)
