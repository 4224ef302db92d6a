"""The auth routes: login, me, refresh, logout, register, API keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import JSONResponse, Response

from app_kernel._runtime import kernel_of_scope
from app_kernel.auth.deps import get_current_user, require_admin
from app_kernel.auth.errors import AuthError
from app_kernel.auth.models import UserIdentity
from app_kernel.auth.service import AuthService
from app_kernel.auth.store import EMAIL_PATTERN
from app_kernel.settings import FeatureSettings

__all__ = ("auth_router",)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FORM_BYTES = 16_384
# Stored text: no control characters (PostgreSQL refuses NUL; the rest ends up in logs).
_PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"


class LoginRequest(BaseModel):
    """Credentials for ``POST /login`` (JSON, or the OAuth2 password form)."""

    username: str = Field(min_length=1, max_length=600)
    password: str = Field(min_length=1, max_length=4096)


class RefreshRequest(BaseModel):
    """A refresh token to rotate."""

    refresh_token: str = Field(min_length=1, max_length=16_384)


class LogoutRequest(BaseModel):
    """``everywhere`` also ends every other login of the user."""

    model_config = ConfigDict(extra="forbid")

    everywhere: bool = False


class RegisterRequest(BaseModel):
    """Self-signup. Fields such as ``role``, ``is_admin`` or ``id`` are refused."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=150)
    email: str = Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=1, max_length=4096)


class ApiKeyCreate(BaseModel):
    """A new API key; ``user_id`` defaults to the caller, ``role`` to ``user``.

    Text is trimmed and must not be blank or hold control characters;
    ``expires_at`` needs a UTC offset and must lie in the future (the key store
    refuses the rest, which would be a 500).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=100, pattern=_PLAIN_TEXT)
    user_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=_PLAIN_TEXT)
    role: str = Field(default="user", min_length=1, max_length=64, pattern=_PLAIN_TEXT)
    expires_at: AwareDatetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            msg = "expires_at must be in the future"
            raise ValueError(msg)
        return value


def _service(request: Request) -> AuthService:
    return kernel_of_scope(request.scope).auth


async def _login_body(request: Request) -> LoginRequest:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "application/x-www-form-urlencoded":
            raw = await request.body()
            if len(raw) > _MAX_FORM_BYTES:
                raise AuthError(413, "The login form is too large.")
            try:
                form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10)
            except ValueError:  # more fields than max_num_fields
                error = {"loc": ("body",), "msg": "Too many form fields.", "type": "value_error"}
                raise RequestValidationError([error]) from None
            data: Any = {k: v[0] for k, v in form.items() if v}
            return LoginRequest.model_validate(data)
        return LoginRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_input=False)) from None


def _user_view(record: Any, identity: UserIdentity) -> dict[str, Any]:
    # The role stays the identity's: the one the token or key grants (``is_admin``
    # may override the stored role), so ``role`` and ``is_admin`` always agree.
    data = identity.to_dict()
    if record is not None:
        for key in ("username", "email", "is_active", "created_at"):
            if key in record and record[key] is not None:
                data[key] = record[key]
        data["is_admin"] = identity.is_admin
    return data


def auth_router(features: FeatureSettings) -> APIRouter:
    """The auth routes under ``features.auth_prefix``.

    Login, refresh and register exist in local mode only; register only when
    self-signup is on. Me and logout exist in every mode; the API key routes
    are admin-only.
    """
    router = APIRouter(prefix=features.auth_prefix, tags=["auth"])
    local = features.auth_mode == "local"

    if local:

        @router.post(
            "/login",
            summary="Log in with a username and password",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": LoginRequest.model_json_schema(),
                        },
                        "application/x-www-form-urlencoded": {
                            "schema": LoginRequest.model_json_schema(),
                        },
                    },
                }
            },
        )
        async def login(request: Request) -> JSONResponse:
            body = await _login_body(request)
            pair = await _service(request).login(request, body.username, body.password)
            return JSONResponse(pair.to_dict(), headers=_NO_STORE)

        @router.post("/refresh", summary="Rotate a refresh token")
        async def refresh(request: Request, body: RefreshRequest) -> JSONResponse:
            pair = await _service(request).refresh(body.refresh_token)
            return JSONResponse(pair.to_dict(), headers=_NO_STORE)

        if features.allow_self_signup:

            @router.post("/register", status_code=201, summary="Create an account")
            async def register(request: Request, body: RegisterRequest) -> JSONResponse:
                record = await _service(request).register(body.username, body.email, body.password)
                view = {k: record.get(k) for k in ("id", "username", "email", "role")}
                return JSONResponse(view, status_code=201, headers=_NO_STORE)

    @router.get("/me", summary="The caller's identity")
    async def me(
        request: Request, user: Annotated[UserIdentity, Depends(get_current_user)]
    ) -> JSONResponse:
        record = None
        if user.auth_method in ("token", "apikey"):
            record = await _service(request).users.get_by_id(user.id)
        return JSONResponse(jsonable_encoder(_user_view(record, user)), headers=_NO_STORE)

    @router.post("/logout", status_code=204, summary="End this login (or every login)")
    async def logout(
        request: Request,
        user: Annotated[UserIdentity, Depends(get_current_user)],
        body: LogoutRequest | None = None,
    ) -> Response:
        service = _service(request)
        await service.logout(user, service.family_of(request))
        if body is not None and body.everywhere:
            await service.revoke_all(user.id, reason="logout_everywhere")
        return Response(status_code=204, headers=_NO_STORE)

    @router.post("/api-keys", status_code=201, summary="Create an API key (admin)")
    async def create_api_key(
        request: Request,
        body: ApiKeyCreate,
        admin: Annotated[UserIdentity, Depends(require_admin)],
    ) -> JSONResponse:
        service = _service(request)
        owner = body.user_id or admin.id
        if body.user_id and await service.users.get_by_id(owner) is None:
            raise AuthError(404, "No user with this id.")
        plaintext, record = await service.create_api_key(
            actor_id=admin.id,
            user_id=owner,
            role=body.role,
            name=body.name,
            expires_at=body.expires_at,
        )
        return JSONResponse(
            {"key": plaintext, **record.to_dict()}, status_code=201, headers=_NO_STORE
        )

    @router.get("/api-keys", summary="List API keys (admin)")
    async def list_api_keys(
        request: Request,
        _: Annotated[UserIdentity, Depends(require_admin)],
        user_id: str | None = None,
        include_revoked: bool = False,
    ) -> dict[str, Any]:
        records = await _service(request).api_keys.list(
            user_id=user_id, include_revoked=include_revoked
        )
        return {"items": [r.to_dict() for r in records]}

    @router.delete("/api-keys/{key_id}", status_code=204, summary="Revoke an API key (admin)")
    async def revoke_api_key(
        request: Request,
        key_id: str,
        admin: Annotated[UserIdentity, Depends(require_admin)],
    ) -> Response:
        if not await _service(request).revoke_api_key(key_id, actor_id=admin.id):
            raise AuthError(404, "No active API key with this id.")
        return Response(status_code=204)

    return router
