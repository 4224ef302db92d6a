"""FastAPI dependencies: who is calling, and may they."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from fastapi.encoders import jsonable_encoder
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from fastapi.security.base import SecurityBase
from starlette.requests import Request

from app_kernel._runtime import kernel_of_scope
from app_kernel.auth.errors import AuthError
from app_kernel.auth.models import UserIdentity

__all__ = (
    "API_KEY_SCHEME_NAME",
    "BEARER_SCHEME_NAME",
    "api_key_scheme_definition",
    "get_current_user",
    "get_optional_user",
    "identify_request",
    "require_admin",
)

_STATE_KEY = "app_kernel_user"

API_KEY_HEADER = "X-API-Key"
BEARER_SCHEME_NAME = "OAuth2PasswordBearer"
API_KEY_SCHEME_NAME = "APIKeyHeader"


async def identify_request(request: Request) -> UserIdentity | None:
    """The caller of ``request`` or None, asked of the auth service once per request."""
    state = request.scope.setdefault("state", {})
    cached = state.get(_STATE_KEY)
    if cached is not None:
        return cached if isinstance(cached, UserIdentity) else None
    user = await kernel_of_scope(request.scope).auth.identify(request)
    state[_STATE_KEY] = user if user is not None else False
    return user


class _CallerDependency(SecurityBase):
    """A dependency that FastAPI and the OpenAPI document see as a security scheme.

    FastAPI resolves every sub-dependency on every request, so declaring the
    bearer and API-key schemes as two ``Security`` parameters of the
    dependency cost about 40 us per request. Being a scheme itself, the
    dependency is one call, and the document still lists the bearer scheme on
    each route that uses it; the kernel adds the API-key scheme beside it
    (:func:`app_kernel.app.init_app_kernel` rewrites the document), since both
    credentials are accepted. The token URL is rewritten there too.
    """

    def __init__(self) -> None:
        self.model = OAuth2PasswordBearer(tokenUrl="/auth/login", auto_error=False).model
        self.scheme_name = BEARER_SCHEME_NAME


class _CurrentUser(_CallerDependency):
    async def __call__(self, request: Request) -> UserIdentity:
        """The caller's identity; 401 without valid credentials, 403 when deactivated."""
        user = await identify_request(request)
        if user is None:
            raise AuthError.missing()
        return user


class _OptionalUser(_CallerDependency):
    async def __call__(self, request: Request) -> UserIdentity | None:
        """The caller's identity, or None when the request carries no credentials.

        Credentials that are present but wrong still answer 401: a broken token
        is never silently treated as anonymous.
        """
        return await identify_request(request)


get_current_user = _CurrentUser()
"""``Depends(get_current_user)``: the caller; 401 without valid credentials, 403 when
deactivated."""

get_optional_user = _OptionalUser()
"""``Depends(get_optional_user)``: the caller, or None without credentials (wrong ones
still answer 401)."""


def api_key_scheme_definition() -> dict[str, Any]:
    """The OpenAPI ``securitySchemes`` entry of the ``X-API-Key`` header."""
    model = APIKeyHeader(name=API_KEY_HEADER, auto_error=False).model
    definition: dict[str, Any] = jsonable_encoder(model, by_alias=True, exclude_none=True)
    return definition


async def require_admin(
    user: Annotated[UserIdentity, Depends(get_current_user)],
) -> UserIdentity:
    """The caller's identity when it is an admin; 403 otherwise."""
    if not user.is_admin:
        detail = "This action needs an admin."
        raise AuthError.forbidden(detail)
    return user
