"""The auth flows: identify a caller, log in, refresh, log out, register.

:class:`AuthService` is built by the composition root from the settings and
the parts it needs (user store, token codec, password hasher, shared state,
API keys, audit hook); it imports no other area of the kernel.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request

from app_kernel.auth.credentials import read_credential
from app_kernel.auth.errors import AuthError
from app_kernel.auth.models import TokenPayload, UserIdentity
from app_kernel.auth.passwords import PasswordHasher, check_password_policy
from app_kernel.auth.revocation import TtlCache
from app_kernel.auth.state.base import AuthStateBackend, RotateOutcome, UserRevocation
from app_kernel.auth.store import (
    InvalidEmail,
    InvalidUsername,
    UserAdminStore,
    UserRecord,
    UserStore,
    UserStoreMissingFeature,
    check_email,
    normalise_username,
)
from app_kernel.auth.throttle import LoginThrottle
from app_kernel.auth.tokens import InvalidTokenError, TokenCodec
from app_kernel.observability.logging import get_logger
from app_kernel.settings import AuthSettings, FeatureSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app_kernel.auth.apikeys import ApiKeyRecord, ApiKeyStore
    from app_kernel.auth.external import OidcVerifier
    from app_kernel.auth.sql_store import SqlUserStore

__all__ = ("AuditHook", "AuthService", "RegistrationError", "TokenPair")

# Token identities kept per process; the cache starts over when full.
_MAX_TOKEN_IDENTITIES = 10_000

_log = get_logger("app_kernel.auth")
IsAdmin = Callable[[Mapping[str, Any]], bool]


class AuditHook(Protocol):
    """**Protocol**: how the auth layer records audit events (``AuditLogger.log``)."""

    def __call__(
        self,
        action: str,
        status: str = "success",
        actor_id: str | None = None,
        actor_type: str = "user",
        resource_type: str | None = None,
        resource_id: str | None = None,
        request_id: str | None = None,
        ip_address: str | None = None,
        user_agent: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        session: AsyncSession | None = None,
    ) -> Awaitable[Any]: ...


class RegistrationError(AuthError):
    """Registration refused (policy, invalid or taken username); answered 422 or 409."""


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What login and refresh answer."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
        }


class AuthService:
    """Every auth decision the kernel makes, in one place."""

    def __init__(
        self,
        *,
        settings: AuthSettings,
        features: FeatureSettings,
        codec: TokenCodec,
        hasher: PasswordHasher,
        users: UserStore,
        state: AuthStateBackend,
        api_keys: ApiKeyStore,
        audit: AuditHook,
        is_admin: IsAdmin | None = None,
        oidc: OidcVerifier | None = None,
        sql_users: SqlUserStore | None = None,
    ) -> None:
        self.settings = settings
        self.mode = features.auth_mode
        self.codec = codec
        self.hasher = hasher
        self.users = users
        self.state = state
        self.api_keys = api_keys
        self.audit = audit
        self.is_admin = is_admin or (lambda record: record.get("role") == "admin")
        self.oidc = oidc
        self.sql_users = sql_users
        self.throttle = LoginThrottle(
            state,
            max_per_user=settings.login_max_failures_per_user,
            max_per_ip=settings.login_max_failures_per_ip,
            window_seconds=settings.login_failure_window_seconds,
        )
        self._user_state: TtlCache[str, UserRevocation] = TtlCache(
            settings.revocation_cache_seconds
        )
        self._families: TtlCache[str, str | None] = TtlCache(settings.revocation_cache_seconds)
        self._key_owners: TtlCache[str, bool] = TtlCache(settings.revocation_cache_seconds)
        # Identities built from access tokens, by (sub, email, role): a frozen
        # model is the same answer for every request of one token holder.
        self._token_identities: dict[tuple[str, str, str], UserIdentity] = {}
        self.family_ttl_seconds = settings.refresh_family_max_days * 86400

    # -- identifying callers -------------------------------------------------

    async def identify(self, request: Request) -> UserIdentity | None:
        """The caller of ``request``, None without credentials.

        Raises:
            AuthError: 401 for refused credentials, 403 for a deactivated user.
        """
        credential = read_credential(request.scope, self.settings.max_token_bytes)
        if credential is None:
            return None
        if credential.kind == "apikey":
            return await self._identify_api_key(credential.value)
        if self.mode == "apikey":
            detail = "This service accepts API keys only."
            raise AuthError.invalid(detail)
        if self.mode == "external":
            return await self._identify_external(credential.value)
        return await self._identify_access_token(credential.value)

    async def _identify_access_token(self, token: str) -> UserIdentity:
        try:
            payload = self.codec.decode(token, expected_type="access")
        except InvalidTokenError:
            raise AuthError.invalid() from None
        await self._check_revocation(payload)
        key = (payload.sub, payload.email or "", payload.role or "user")
        identity = self._token_identities.get(key)
        if identity is None:
            if len(self._token_identities) >= _MAX_TOKEN_IDENTITIES:
                self._token_identities.clear()
            identity = UserIdentity(id=key[0], email=key[1], role=key[2], auth_method="token")
            self._token_identities[key] = identity
        return identity

    async def _check_revocation(self, payload: TokenPayload) -> None:
        # The active flag comes first: a deactivated user's valid token is 403, not 401.
        revocation = await self._user_state.get(payload.sub, self.state.user_state)
        if revocation.disabled:
            detail = "This account is deactivated."
            raise AuthError.forbidden(detail)
        if revocation.valid_after is not None and payload.iat < revocation.valid_after:
            raise AuthError.invalid()
        if payload.fam is not None:
            owner = await self._families.get(payload.fam, self.state.family_user)
            if owner != payload.sub:
                raise AuthError.invalid()

    async def _identify_api_key(self, text: str) -> UserIdentity:
        record = await self.api_keys.verify(text)
        if record is None:
            raise AuthError.invalid()
        revocation = await self._user_state.get(record.user_id, self.state.user_state)
        if revocation.disabled:
            detail = "This account is deactivated."
            raise AuthError.forbidden(detail)
        # A key outlives nothing: once its owner is gone from the store it stops working.
        if not await self._key_owners.get(record.user_id, self._user_exists):
            raise AuthError.invalid()
        return UserIdentity(
            id=record.user_id,
            role=record.role,
            created_at=record.created_at,
            auth_method="apikey",
        )

    async def _user_exists(self, user_id: str) -> bool:
        return await self.users.get_by_id(user_id) is not None

    async def _identify_external(self, token: str) -> UserIdentity:
        assert self.oidc is not None
        from app_kernel.auth.external import InvalidExternalToken

        try:
            return await self.oidc.verify(token)
        except InvalidExternalToken:
            raise AuthError.invalid() from None

    # -- local accounts ------------------------------------------------------

    def _role(self, record: UserRecord) -> str:
        if self.is_admin(record):
            return "admin"
        role = str(record.get("role") or "user")
        return "user" if role == "admin" else role

    def _issue(
        self, record: UserRecord, family_id: str, family_expires_at: float | None = None
    ) -> tuple[TokenPair, TokenPayload]:
        role = self._role(record)
        access = self.codec.encode_access(record, role=role, family_id=family_id)
        refresh, payload = self.codec.encode_refresh(
            record, family_id=family_id, family_expires_at=family_expires_at
        )
        pair = TokenPair(access, refresh, self.settings.access_token_expires_minutes * 60)
        return pair, payload

    async def login(self, request: Request, username: str, password: str) -> TokenPair:
        """Check a username and password; answer a new token pair.

        Unknown user, wrong password and deactivated user get the same 401 and
        cost one password hash each, so neither timing nor answer tells them
        apart. Failures are counted per username and per client IP.
        """
        client_ip = _client_ip(request)
        await self.throttle.check(username, client_ip)
        record = await self.users.get_by_username(username)
        stored = record.get("password_hash") if record is not None else None
        if record is None or not isinstance(stored, str) or not stored:
            await self.hasher.verify_dummy_async(password)
            ok = False
        else:
            ok = await self.hasher.verify_async(password, stored)
        active = record is not None and bool(record.get("is_active", True))
        if not ok or record is None or not active:
            await self.throttle.failed(username, client_ip)
            await self.audit(
                "auth.login",
                status="failure",
                actor_id=str(record["id"]) if record is not None else None,
                resource_type="session",
                user_agent=request.headers.get("user-agent"),
                metadata={"username": username[:150], "reason": _reason(record, ok, active)},
            )
            detail = "Invalid username or password."
            raise AuthError(401, detail, {"WWW-Authenticate": "Bearer"})
        await self.throttle.succeeded(username)
        assert isinstance(stored, str)
        if self.hasher.needs_rehash(stored):
            await self._rehash(record, password)
        family_id = uuid.uuid4().hex
        family_expires_at = await self.state.now() + self.family_ttl_seconds
        pair, refresh_payload = self._issue(record, family_id, family_expires_at)
        await self.state.start_family(
            family_id, str(record["id"]), refresh_payload.jti, family_expires_at
        )
        await self.audit(
            "auth.login",
            actor_id=str(record["id"]),
            resource_type="session",
            resource_id=family_id,
            user_agent=request.headers.get("user-agent"),
        )
        return pair

    async def _rehash(self, record: UserRecord, password: str) -> None:
        if not isinstance(self.users, UserAdminStore):
            _log.warning(
                "password hash uses old parameters but the user store cannot update it",
                user_id=str(record["id"]),
            )
            return
        new_hash = await self.hasher.hash_async(password)
        await self.users.set_password_hash(str(record["id"]), new_hash)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate a refresh token: the old one is retired, a new pair answered.

        A retired token presented again revokes its whole family (every token
        descended from the same login) and is recorded in the audit trail.
        """
        try:
            payload = self.codec.decode(refresh_token, expected_type="refresh")
        except InvalidTokenError:
            raise AuthError.invalid() from None
        if payload.fam is None:
            raise AuthError.invalid()
        revocation = await self.state.user_state(payload.sub)
        if revocation.disabled or (
            revocation.valid_after is not None and payload.iat < revocation.valid_after
        ):
            raise AuthError.invalid()
        record = await self.users.get_by_id(payload.sub)
        if record is None or not record.get("is_active", True):
            await self.state.revoke_family(payload.fam)
            raise AuthError.invalid()
        pair, new_payload = self._issue(record, payload.fam)
        outcome = await self.state.rotate(payload.fam, payload.jti, new_payload.jti)
        if outcome is RotateOutcome.ROTATED:
            return pair
        self._families.forget(payload.fam)
        if outcome is RotateOutcome.REUSED:
            _log.warning("refresh token reused; family revoked", user_id=payload.sub)
            await self.audit(
                "auth.refresh_reuse",
                status="failure",
                actor_id=payload.sub,
                resource_type="session",
                resource_id=payload.fam,
            )
        raise AuthError.invalid()

    async def logout(self, user: UserIdentity, access_token_family: str | None) -> None:
        """End the caller's login: its refresh family is revoked."""
        if access_token_family is not None:
            await self.state.revoke_family(access_token_family)
            self._families.forget(access_token_family)
        await self.audit(
            "auth.logout",
            actor_id=user.id,
            resource_type="session",
            resource_id=access_token_family,
        )

    async def revoke_all(self, user_id: str, *, reason: str, actor_type: str = "user") -> None:
        """End every token of a user issued until now (logout everywhere, password change)."""
        now = await self.state.now()
        await self.state.set_valid_after(user_id, now, self.family_ttl_seconds)
        self._user_state.forget(user_id)
        await self.audit(
            "auth.tokens_revoked",
            actor_id=user_id if actor_type == "user" else None,
            actor_type=actor_type,
            resource_type="user",
            resource_id=user_id,
            metadata={"reason": reason},
        )

    async def set_active(self, user_id: str, active: bool, *, actor_type: str = "user") -> None:
        """Record a deactivation (or reactivation) in the shared state.

        A deactivated user's tokens answer 403 at their next request; the
        caller changes the user store's flag itself.
        """
        await self.state.set_disabled(user_id, not active, self.family_ttl_seconds)
        if not active:
            now = await self.state.now()
            await self.state.set_valid_after(user_id, now, self.family_ttl_seconds)
        self._user_state.forget(user_id)
        await self.audit(
            "admin.user_activated" if active else "admin.user_deactivated",
            actor_type=actor_type,
            resource_type="user",
            resource_id=user_id,
        )

    def family_of(self, request: Request) -> str | None:
        """The token family of the access token on ``request``, if any."""
        credential = read_credential(request.scope, self.settings.max_token_bytes)
        if credential is None or credential.kind != "bearer" or self.mode != "local":
            return None
        try:
            return self.codec.decode(credential.value, expected_type="access").fam
        except InvalidTokenError:
            return None

    async def register(self, username: str, email: str, password: str) -> UserRecord:
        """Create a local account with role ``user`` (self-signup).

        Raises:
            RegistrationError: 422 for a refused username or password, 409 when
                the username or email is taken.
        """
        try:
            normalise_username(username)
            check_email(email)
        except (InvalidUsername, InvalidEmail) as exc:
            raise RegistrationError(422, str(exc)) from None
        problems = check_password_policy(
            password,
            min_length=self.settings.password_min_length,
            max_length=self.settings.password_max_length,
        )
        if problems:
            raise RegistrationError(422, " ".join(problems))
        password_hash = await self.hasher.hash_async(password)
        try:
            record = await self.create_user(username, email, password_hash, action="auth.register")
        except ValueError:
            detail = "A user with this username or email already exists."
            raise RegistrationError(409, detail) from None
        return record

    async def create_user(
        self,
        username: str,
        email: str,
        password_hash: str,
        *,
        role: str = "user",
        action: str = "admin.user_created",
        actor_type: str = "user",
    ) -> UserRecord:
        """Create a user and record it in the audit trail.

        On the kernel's own SQL store the user row and its audit row commit
        together. An app store's ``create`` takes no role, so a non-default
        role needs ``UserAdminStore.set_role``.

        Raises:
            ValueError: the username or email is taken, or either is invalid
                (:class:`InvalidUsername`, :class:`InvalidEmail`).
            UserStoreMissingFeature: a role was asked of a store that cannot set one.
        """
        check_email(email)
        if self.sql_users is not None and self.users is self.sql_users:
            async with self.sql_users.database.sessions() as session, session.begin():
                record = await self.sql_users.create(
                    username, email, password_hash, role=role, session=session
                )
                await self._audit_user(action, record, actor_type, session=session)
            return record
        record = await self.users.create(username, email, password_hash)
        if role != "user":
            if not isinstance(self.users, UserAdminStore):
                raise UserStoreMissingFeature("creating a user with a role", "set_role")  # noqa: EM101
            await self.users.set_role(str(record["id"]), role)
            record = {**record, "role": role}
        await self._audit_user(action, record, actor_type)
        return record

    async def _audit_user(
        self,
        action: str,
        record: UserRecord,
        actor_type: str,
        *,
        session: AsyncSession | None = None,
    ) -> None:
        await self.audit(
            action,
            actor_id=str(record["id"]) if actor_type == "user" else None,
            actor_type=actor_type,
            resource_type="user",
            resource_id=str(record["id"]),
            metadata={"role": record.get("role")},
            session=session,
        )

    async def create_api_key(
        self,
        *,
        actor_id: str,
        user_id: str,
        role: str,
        name: str,
        expires_at: datetime | None = None,
        actor_type: str = "user",
    ) -> tuple[str, ApiKeyRecord]:
        """Create an API key; the key row and its audit row commit together."""
        async with self.api_keys.database.sessions() as session, session.begin():
            plaintext, record = await self.api_keys.create(
                user_id=user_id, role=role, name=name, expires_at=expires_at, session=session
            )
            await self.audit(
                "auth.api_key.created",
                actor_id=actor_id,
                actor_type=actor_type,
                resource_type="api_key",
                resource_id=record.key_id,
                metadata={"user_id": user_id, "role": role, "name": name},
                session=session,
            )
        return plaintext, record

    async def revoke_api_key(self, key_id: str, *, actor_id: str, actor_type: str = "user") -> bool:
        """Revoke an API key; False if no active key has this id."""
        async with self.api_keys.database.sessions() as session, session.begin():
            revoked = await self.api_keys.revoke(key_id, session=session)
            if revoked:
                await self.audit(
                    "auth.api_key.revoked",
                    actor_id=actor_id,
                    actor_type=actor_type,
                    resource_type="api_key",
                    resource_id=key_id,
                    session=session,
                )
        return revoked

    async def aclose(self) -> None:
        """Release what the service holds (the external verifier's HTTP client)."""
        if self.oidc is not None:
            await self.oidc.aclose()


def _client_ip(request: Request) -> str | None:
    state = request.scope.get("state") or {}
    value = state.get("client_ip")
    if isinstance(value, str):
        return value
    return request.client.host if request.client else None


def _reason(record: UserRecord | None, ok: bool, active: bool) -> str:
    if record is None:
        return "unknown_user"
    if not ok:
        return "wrong_password"
    return "inactive" if not active else "ok"
