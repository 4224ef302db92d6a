"""FastAPI dependencies: who is calling, and may they."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from starlette.requests import Request

from app_kernel._runtime import kernel_of_app
from app_kernel.auth.errors import AuthError
from app_kernel.auth.models import UserIdentity

__all__ = ("get_current_user", "get_optional_user", "identify_request", "require_admin")

_STATE_KEY = "app_kernel_user"

# Declared for the OpenAPI document only (the "Authorize" button); the kernel reads
# the headers itself. The token URL is rewritten to the mounted login path when
# the kernel is wired into an app.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/login", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False)


async def identify_request(request: Request) -> UserIdentity | None:
    """The caller of ``request`` or None, asked of the auth service once per request."""
    state = request.scope.setdefault("state", {})
    cached = state.get(_STATE_KEY)
    if cached is not None:
        return cached if isinstance(cached, UserIdentity) else None
    user = await kernel_of_app(request.app).auth.identify(request)
    state[_STATE_KEY] = user if user is not None else False
    return user


# Both dependencies below read the credentials through identify_request rather
# than through each other: FastAPI pays for every level of nested dependencies
# on every request, and these run on nearly every route.


async def get_optional_user(
    request: Request,
    _bearer: Annotated[str | None, Security(oauth2_scheme)] = None,
    _api_key: Annotated[str | None, Security(api_key_scheme)] = None,
) -> UserIdentity | None:
    """The caller's identity, or None when the request carries no credentials.

    Credentials that are present but wrong still answer 401: a broken token is
    never silently treated as anonymous.
    """
    return await identify_request(request)


async def get_current_user(
    request: Request,
    _bearer: Annotated[str | None, Security(oauth2_scheme)] = None,
    _api_key: Annotated[str | None, Security(api_key_scheme)] = None,
) -> UserIdentity:
    """The caller's identity; 401 without valid credentials, 403 when deactivated."""
    user = await identify_request(request)
    if user is None:
        raise AuthError.missing()
    return user


async def require_admin(
    user: Annotated[UserIdentity, Depends(get_current_user)],
) -> UserIdentity:
    """The caller's identity when it is an admin; 403 otherwise."""
    if not user.is_admin:
        detail = "This action needs an admin."
        raise AuthError.forbidden(detail)
    return user
