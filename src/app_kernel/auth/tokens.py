"""The kernel's JSON Web Tokens: signing keys, encoding and strict decoding.

Access tokens are RFC 9068 JWTs (header ``typ: at+jwt``); refresh tokens are
JWTs with the claim ``typ: refresh`` and a token family ``fam``. One algorithm
is pinned by the settings (HS256, EdDSA or ES256) and no other is accepted.

:meth:`TokenCodec.decode` does not trust PyJWT alone: the kernel itself caps
the size, parses the header and refuses foreign algorithms, ``crit``
extensions and unknown ``kid`` values before PyJWT checks the signature and
the registered claims, then checks the token type and the claim types. Header
keys that point at keys (``jku``, ``x5u``, ``jwk``, ``x5c``) are never read.
Every refusal is one :class:`InvalidTokenError` with a short reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import secrets
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import HMACAlgorithm
from pydantic import ValidationError

from app_kernel.auth.models import TokenPayload, UserIdentity
from app_kernel.auth.token_cache import VerifiedTokenCache
from app_kernel.errors import KernelError, SettingsError

if TYPE_CHECKING:
    from app_kernel.settings import AuthSettings

__all__ = (
    "InvalidTokenError",
    "TokenCodec",
    "TokenKeys",
    "TokenType",
    "create_access_token",
    "create_refresh_token",
    "decode_token",
)

Algorithm: TypeAlias = Literal["HS256", "EdDSA", "ES256"]
TokenType: TypeAlias = Literal["access", "refresh"]
SigningKey: TypeAlias = bytes | Ed25519PrivateKey | ec.EllipticCurvePrivateKey
VerificationKey: TypeAlias = bytes | Ed25519PublicKey | ec.EllipticCurvePublicKey

ACCESS_HEADER_TYP: Final = "at+jwt"
REFRESH_HEADER_TYP: Final = "JWT"
DEFAULT_KEY_ID: Final = "k1"
DEFAULT_MAX_TOKEN_BYTES: Final = 8192

_ALGORITHMS: Final = ("HS256", "EdDSA", "ES256")
_HEADER_TYP: Final[Mapping[str, str]] = {"access": ACCESS_HEADER_TYP, "refresh": REFRESH_HEADER_TYP}
_REQUIRED: Final = ("exp", "iat", "nbf", "sub", "jti", "iss", "aud")
_MAX_HEADER_CHARS: Final = 1024  # alg, typ and kid fit in far less
_MIN_HMAC_BYTES: Final = 32  # RFC 7518 §3.2; below it PyJWT warns
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")

# Reasons of InvalidTokenError: short, fixed, and free of token content.
_NOT_A_STRING: Final = "token is not a string"
_TOO_LARGE: Final = "token too large"
_MALFORMED: Final = "malformed token"
_HEADER_TOO_LARGE: Final = "header too large"
_ALGORITHM: Final = "algorithm not allowed"
_CRIT: Final = "critical header not supported"
_WRONG_TYPE: Final = "wrong token type"
_UNKNOWN_KID: Final = "unknown key id"
_INVALID_CLAIMS: Final = "invalid claims"
_EXPIRED: Final = "token expired"
_NOT_YET_VALID: Final = "token not yet valid"
_WRONG_ISSUER: Final = "wrong issuer"
_WRONG_AUDIENCE: Final = "wrong audience"


class InvalidTokenError(KernelError):
    """A token was refused: malformed, forged, expired, or of the wrong kind.

    The message is a short reason (``"token expired"``, ``"unknown key id"``) fit
    for logs; it never contains the token or any part of it.

    Attributes:
        reason: the same short reason.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --- keys --------------------------------------------------------------------------------


class TokenKeys:
    """The signing key and the verification keys, by ``kid``, for one algorithm.

    Build it with :meth:`from_settings` or :meth:`hs256`. Tokens are signed with
    the current key and carry its ``kid``; tokens are verified with the key their
    ``kid`` names, looked up in memory only. Retired keys stay in the map until
    the tokens they signed have expired. ``repr`` shows no key material.

    Args:
        algorithm: ``HS256``, ``EdDSA`` (Ed25519) or ``ES256`` (P-256).
        key_id: ``kid`` of the current key; must be in ``verification_keys``.
        signing_key: the HMAC secret as bytes, or the private key.
        verification_keys: ``kid`` to HMAC secret or public key.

    Raises:
        SettingsError: a key does not suit the algorithm, or ``key_id`` has no
            verification key.
    """

    __slots__ = ("_algorithm", "_key_id", "_short_hmac", "_signing_key", "_verification")

    def __init__(
        self,
        algorithm: Algorithm,
        *,
        key_id: str,
        signing_key: SigningKey,
        verification_keys: Mapping[str, VerificationKey],
    ) -> None:
        if algorithm not in _ALGORITHMS:
            msg = f"auth.algorithm: expected one of {', '.join(_ALGORITHMS)}, got {algorithm!r}"
            raise SettingsError(msg)
        if not isinstance(key_id, str) or not key_id:
            msg = "auth.key_id: expected a non-empty string"
            raise SettingsError(msg)
        if key_id not in verification_keys:
            msg = f"auth.key_id: no verification key for kid {key_id!r}"
            raise SettingsError(msg)
        _check_key(algorithm, signing_key, private=True, where="auth signing key")
        for kid, key in verification_keys.items():
            _check_key(algorithm, key, private=False, where=f"auth verification key {kid!r}")
        self._algorithm: Algorithm = algorithm
        self._key_id = key_id
        self._signing_key = signing_key
        self._verification = dict(verification_keys)
        self._short_hmac = algorithm == "HS256" and any(
            isinstance(key, bytes) and len(key) < _MIN_HMAC_BYTES
            for key in (signing_key, *self._verification.values())
        )

    @classmethod
    def hs256(
        cls,
        secret: str,
        *,
        key_id: str = DEFAULT_KEY_ID,
        previous_keys: Mapping[str, str] | None = None,
    ) -> TokenKeys:
        """HS256 keys from a secret and optional retired secrets by ``kid``.

        Any non-empty secret is accepted here; the kernel's start-up check
        requires 32 bytes for a service.

        Raises:
            SettingsError: a secret is empty, or looks like a PEM or SSH key.
        """
        current = _hmac_secret(secret, "auth.token_secret")
        keys: dict[str, VerificationKey] = {}
        for kid, old in (previous_keys or {}).items():
            keys[kid] = _hmac_secret(old, f"auth.previous_keys[{kid!r}]")
        keys[key_id] = current
        return cls("HS256", key_id=key_id, signing_key=current, verification_keys=keys)

    @classmethod
    def from_settings(cls, auth: AuthSettings, secret: str | None) -> TokenKeys:
        """Keys for ``auth.algorithm``.

        Args:
            auth: the auth settings (``algorithm``, ``key_id``, ``private_key``,
                ``public_key``, ``previous_keys``).
            secret: the effective HS256 secret (the kernel may generate one in
                debug mode); ignored for EdDSA and ES256.

        Raises:
            SettingsError: a key is missing, unreadable, of the wrong type, or the
                public key does not match the private key.
        """
        if auth.key_id in auth.previous_keys:
            msg = f"auth.previous_keys: kid {auth.key_id!r} is also the current auth.key_id"
            raise SettingsError(msg)
        if auth.algorithm == "HS256":
            if secret is None:
                msg = "auth.token_secret: HS256 needs a secret"
                raise SettingsError(msg)
            return cls.hs256(secret, key_id=auth.key_id, previous_keys=auth.previous_keys)
        if not auth.private_key:
            msg = f"auth.private_key: {auth.algorithm} needs a PEM private key"
            raise SettingsError(msg)
        private = _load_private(auth.private_key)
        public = private.public_key()
        if auth.public_key:
            configured = _load_public(auth.public_key, "auth.public_key")
            if _public_bytes(configured) != _public_bytes(public):
                msg = "auth.public_key: does not match auth.private_key"
                raise SettingsError(msg)
        keys: dict[str, VerificationKey] = {}
        for kid, pem in auth.previous_keys.items():
            keys[kid] = _load_public(pem, f"auth.previous_keys[{kid!r}]")
        keys[auth.key_id] = public
        return cls(auth.algorithm, key_id=auth.key_id, signing_key=private, verification_keys=keys)

    @property
    def algorithm(self) -> Algorithm:
        """The one algorithm tokens are signed and verified with."""
        return self._algorithm

    @property
    def key_id(self) -> str:
        """``kid`` of the current signing key."""
        return self._key_id

    @property
    def signing_key(self) -> SigningKey:
        """The current signing key (HMAC secret bytes or private key)."""
        return self._signing_key

    @property
    def key_ids(self) -> frozenset[str]:
        """Every ``kid`` a token may carry."""
        return frozenset(self._verification)

    def verification_key(self, kid: str | None) -> VerificationKey:
        """The key that verifies tokens signed under ``kid``; the current one for None.

        Raises:
            InvalidTokenError: ``kid`` is not in the map.
        """
        key = self._verification.get(self._key_id if kid is None else kid)
        if key is None:
            raise InvalidTokenError(_UNKNOWN_KID)
        return key

    @contextlib.contextmanager
    def quiet_short_hmac(self) -> Iterator[None]:
        """Silence PyJWT's ``InsecureKeyLengthWarning`` when an HMAC key is short.

        Only the plain functions meet short secrets (the spec's examples use
        placeholders; the kernel's start-up check demands 32 bytes). The filter
        is installed only for such keys, because ``warnings.catch_warnings``
        swaps process-wide state and a service with a proper secret should not.
        """
        if not self._short_hmac:
            yield
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            yield

    def __repr__(self) -> str:
        kids = ", ".join(sorted(self._verification))
        return f"TokenKeys(algorithm={self._algorithm!r}, key_id={self._key_id!r}, kids=[{kids}])"


def _hmac_secret(secret: str, where: str) -> bytes:
    if not isinstance(secret, str) or not secret:
        msg = f"{where}: expected a non-empty secret"
        raise SettingsError(msg)
    key = secret.encode("utf-8")
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(key)
    except jwt.InvalidKeyError:
        msg = f"{where}: expected a random secret, got something shaped like a PEM or SSH key"
        raise SettingsError(msg) from None
    return key


def _load_private(pem: str) -> Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnicodeError):
        msg = "auth.private_key: expected an unencrypted PEM private key"
        raise SettingsError(msg) from None
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        msg = f"auth.private_key: expected an Ed25519 or P-256 key, got {type(key).__name__}"
        raise SettingsError(msg)
    return key


def _load_public(pem: str, where: str) -> Ed25519PublicKey | ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError, UnicodeError):
        msg = f"{where}: expected a PEM public key"
        raise SettingsError(msg) from None
    if not isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        msg = f"{where}: expected an Ed25519 or P-256 key, got {type(key).__name__}"
        raise SettingsError(msg)
    return key


def _public_bytes(key: Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_key(algorithm: Algorithm, key: object, *, private: bool, where: str) -> None:
    if algorithm == "HS256":
        ok = isinstance(key, bytes) and len(key) > 0
        expected = "a non-empty HMAC secret"
    elif algorithm == "EdDSA":
        ok = isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey)
        expected = "an Ed25519 key"
    else:
        kind = ec.EllipticCurvePrivateKey if private else ec.EllipticCurvePublicKey
        ok = isinstance(key, kind) and isinstance(key.curve, ec.SECP256R1)
        expected = "a P-256 (secp256r1) key"
    if not ok:
        msg = f"{where}: {algorithm} needs {expected}, got {type(key).__name__}"
        raise SettingsError(msg)


# --- codec -------------------------------------------------------------------------------


class TokenCodec:
    """Encodes and strictly decodes the kernel's access and refresh tokens.

    Args:
        keys: the signing and verification keys.
        issuer: ``iss`` written and required (exact match).
        audience: ``aud`` written and required (exact match, a single string).
        leeway_seconds: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
        max_token_bytes: longer tokens are refused before any decoding.
        access_ttl: lifetime of an access token.
        refresh_ttl: lifetime of a refresh token.

    Raises:
        ValueError: a lifetime is not positive, the leeway is negative, or the
            size cap is not positive.
    """

    def __init__(
        self,
        keys: TokenKeys,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float,
        max_token_bytes: int,
        access_ttl: timedelta,
        refresh_ttl: timedelta,
    ) -> None:
        if access_ttl <= timedelta(0) or refresh_ttl <= timedelta(0):
            msg = f"token lifetimes must be positive, got {access_ttl} and {refresh_ttl}"
            raise ValueError(msg)
        if leeway_seconds < 0:
            msg = f"leeway_seconds must not be negative, got {leeway_seconds}"
            raise ValueError(msg)
        if max_token_bytes <= 0:
            msg = f"max_token_bytes must be positive, got {max_token_bytes}"
            raise ValueError(msg)
        if not issuer or not audience:
            msg = "issuer and audience must be non-empty"
            raise ValueError(msg)
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.max_token_bytes = max_token_bytes
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        # Access tokens come back on every request until they expire: verify each once.
        self._verified = VerifiedTokenCache(leeway_seconds=leeway_seconds)

    @classmethod
    def from_settings(cls, auth: AuthSettings, secret: str | None) -> TokenCodec:
        """A codec for the auth settings.

        Args:
            auth: the auth settings.
            secret: the effective HS256 secret; ignored for EdDSA and ES256.

        Raises:
            SettingsError: see :meth:`TokenKeys.from_settings`.
        """
        return cls(
            TokenKeys.from_settings(auth, secret),
            issuer=auth.issuer,
            audience=auth.audience,
            leeway_seconds=auth.leeway_seconds,
            max_token_bytes=auth.max_token_bytes,
            access_ttl=timedelta(minutes=auth.access_token_expires_minutes),
            refresh_ttl=timedelta(days=auth.refresh_token_expires_days),
        )

    # -- encoding -----------------------------------------------------------

    def encode_access(
        self,
        user: UserIdentity | Mapping[str, Any],
        *,
        role: str | None = None,
        family_id: str | None = None,
        now: float | None = None,
    ) -> str:
        """Sign an access token for ``user``.

        Args:
            user: a :class:`UserIdentity`, or a user store record (a mapping with
                at least ``id``; ``email`` and ``role`` are read when present).
            role: the ``role`` claim; the user's role when None.
            family_id: the login's refresh token family, written as ``fam`` so
                that revoking the family also refuses its access tokens.
            now: issue time in seconds since the epoch; the current time when None.

        Returns:
            The compact JWT, header ``{"typ": "at+jwt", "kid": ...}``.

        Raises:
            ValueError: ``user`` has no id.
        """
        sub, email, user_role = _user_fields(user)
        claims = self._registered(sub, self.access_ttl, now)
        claims |= {"typ": "access", "role": role if role is not None else user_role, "email": email}
        if family_id is not None:
            claims["fam"] = family_id
        return self._sign(claims, ACCESS_HEADER_TYP)

    def encode_refresh(
        self,
        user: UserIdentity | Mapping[str, Any],
        *,
        family_id: str,
        now: float | None = None,
        family_expires_at: float | None = None,
    ) -> tuple[str, TokenPayload]:
        """Sign a refresh token for ``user`` in the token family ``family_id``.

        Args:
            user: a :class:`UserIdentity` or a user store record with ``id``.
            family_id: the login's token family, the ``fam`` claim.
            now: issue time in seconds since the epoch; the current time when None.
            family_expires_at: the family's absolute end; ``exp`` never passes it.

        Returns:
            The compact JWT and its claims, so the caller can record the ``jti``.

        Raises:
            ValueError: ``user`` has no id, ``family_id`` is empty, or the family
                has already ended.
        """
        if not isinstance(family_id, str) or not family_id:
            msg = "family_id must be a non-empty string"
            raise ValueError(msg)
        sub, _, _ = _user_fields(user)
        claims = self._registered(sub, self.refresh_ttl, now)
        if family_expires_at is not None:
            claims["exp"] = min(claims["exp"], int(family_expires_at))
            if claims["exp"] <= claims["iat"]:
                msg = "the token family has already reached its absolute expiry"
                raise ValueError(msg)
        claims |= {"typ": "refresh", "fam": family_id}
        token = self._sign(claims, REFRESH_HEADER_TYP)
        return token, TokenPayload(**claims, kid=self.keys.key_id)

    def _registered(self, sub: str, ttl: timedelta, now: float | None) -> dict[str, Any]:
        at = time.time() if now is None else now
        issued = int(at)
        return {
            "sub": sub,
            # Milliseconds (RFC 7519 allows a non-integer NumericDate): a revocation
            # ("tokens issued before T") must tell apart tokens of the same second.
            "iat": round(at, 3),
            "nbf": issued,
            "exp": issued + int(ttl.total_seconds()),
            "jti": secrets.token_urlsafe(16),
            "iss": self.issuer,
            "aud": self.audience,
        }

    def _sign(self, claims: dict[str, Any], header_typ: str) -> str:
        headers = {"typ": header_typ, "kid": self.keys.key_id}
        with self.keys.quiet_short_hmac():
            return jwt.encode(
                claims, self.keys.signing_key, algorithm=self.keys.algorithm, headers=headers
            )

    # -- decoding -----------------------------------------------------------

    def decode(self, token: str, *, expected_type: TokenType = "access") -> TokenPayload:
        """Verify ``token`` and answer its claims.

        In order: size cap; three base64url segments; the kernel's own header
        checks (pinned ``alg``, no ``crit``, ``kid`` from the in-memory map,
        header ``typ``); PyJWT's signature and registered-claim checks with
        ``leeway_seconds``; then the ``typ`` claim and the claim types. An
        access token that passed all of that before and has not expired is
        answered from the :class:`VerifiedTokenCache` without the work.

        Args:
            token: the compact JWT.
            expected_type: ``access`` or ``refresh``; the other kind is refused.

        Returns:
            The verified claims, with ``kid`` set to the key that verified them.

        Raises:
            InvalidTokenError: the token is refused, for the reason in its message.
            ValueError: ``expected_type`` is neither ``access`` nor ``refresh``.
        """
        if expected_type not in _HEADER_TYP:
            msg = f"expected_type must be 'access' or 'refresh', got {expected_type!r}"
            raise ValueError(msg)
        if not isinstance(token, str):
            raise InvalidTokenError(_NOT_A_STRING)
        # Before anything else: no base64 or JSON work on oversized input.
        if len(token) > self.max_token_bytes:
            raise InvalidTokenError(_TOO_LARGE)
        if not token.isascii():
            raise InvalidTokenError(_MALFORMED)
        if expected_type == "access":
            cached = self._verified.get(token, time.time())
            if cached is not None:
                return cached
        segments = token.split(".")
        if len(segments) != 3:
            raise InvalidTokenError(_MALFORMED)
        header_segment, payload_segment, _ = segments
        if len(header_segment) > _MAX_HEADER_CHARS:
            raise InvalidTokenError(_HEADER_TOO_LARGE)
        header = _parse_json_object(_b64url_decode(header_segment))
        kid = self._check_header(header, expected_type)
        key = self.keys.verification_key(kid)
        claims = self._verify(token, key)
        # Parsed again by the kernel, rejecting duplicate names that json.loads
        # resolves silently (RFC 8725 §3.3); both readings must then agree, so
        # no parser difference can decide what the claims are.
        payload = _parse_json_object(_b64url_decode(payload_segment))
        if payload != claims:
            raise InvalidTokenError(_MALFORMED)
        verified = self._payload(payload, expected_type, kid)
        if expected_type == "access":
            self._verified.put(token, verified)
        return verified

    def _check_header(self, header: Mapping[str, Any], expected_type: TokenType) -> str | None:
        if header.get("alg") != self.keys.algorithm:
            raise InvalidTokenError(_ALGORITHM)
        if "crit" in header:
            # RFC 7515 §4.1.11: the kernel understands no extension, so any
            # critical one means the token must be refused.
            raise InvalidTokenError(_CRIT)
        if header.get("typ") != _HEADER_TYP[expected_type]:
            raise InvalidTokenError(_WRONG_TYPE)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidTokenError(_UNKNOWN_KID)
        # jku, x5u, jwk and x5c are never read: keys come only from TokenKeys.
        return kid

    def _verify(self, token: str, key: VerificationKey) -> dict[str, Any]:
        try:
            with self.keys.quiet_short_hmac():
                return jwt.decode(
                    token,
                    key,
                    algorithms=[self.keys.algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway_seconds,
                    options={"require": list(_REQUIRED), "strict_aud": True},
                )
        except jwt.ExpiredSignatureError:
            reason = _EXPIRED
        except jwt.ImmatureSignatureError:
            reason = _NOT_YET_VALID
        except jwt.InvalidAudienceError:
            reason = _WRONG_AUDIENCE
        except jwt.InvalidIssuerError:
            reason = _WRONG_ISSUER
        except jwt.InvalidSignatureError:
            reason = "bad signature"
        except jwt.MissingRequiredClaimError as exc:
            reason = f"missing claim {exc.claim}" if exc.claim in _REQUIRED else "missing claim"
        except jwt.InvalidAlgorithmError:
            reason = _ALGORITHM
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            reason = "invalid token"
        raise InvalidTokenError(reason)

    def _payload(
        self, claims: dict[str, Any], expected_type: TokenType, kid: str | None
    ) -> TokenPayload:
        if claims.get("typ") != expected_type:
            raise InvalidTokenError(_WRONG_TYPE)
        # Checked again here so that no PyJWT option or default can loosen them.
        if claims.get("iss") != self.issuer:
            raise InvalidTokenError(_WRONG_ISSUER)
        if claims.get("aud") != self.audience:
            raise InvalidTokenError(_WRONG_AUDIENCE)
        for name in ("nbf", "exp"):
            if type(claims.get(name)) is not int:
                raise InvalidTokenError(_INVALID_CLAIMS)
        iat = claims.get("iat")
        # bool is an int subclass, hence the exact type test.
        if type(iat) not in (int, float) or not math.isfinite(iat):  # type: ignore[arg-type]
            raise InvalidTokenError(_INVALID_CLAIMS)
        now = time.time()
        if claims["exp"] <= now - self.leeway_seconds:
            raise InvalidTokenError(_EXPIRED)
        if claims["nbf"] > now + self.leeway_seconds or claims["iat"] > now + self.leeway_seconds:
            raise InvalidTokenError(_NOT_YET_VALID)
        for name in ("sub", "jti"):
            value = claims.get(name)
            if not isinstance(value, str) or not value:
                raise InvalidTokenError(_INVALID_CLAIMS)
        wanted = "fam" if expected_type == "refresh" else "role"
        if not isinstance(claims.get(wanted), str) or not claims[wanted]:
            msg = f"missing claim {wanted}"
            raise InvalidTokenError(msg)
        fields = {name: claims[name] for name in TokenPayload.model_fields if name in claims}
        fields["kid"] = self.keys.key_id if kid is None else kid
        try:
            return TokenPayload.model_validate(fields, strict=True)
        except ValidationError:
            raise InvalidTokenError(_INVALID_CLAIMS) from None


def _b64url_decode(segment: str) -> bytes:
    # Unpadded base64url only (RFC 7515 §2), in its one canonical spelling.
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        raise InvalidTokenError(_MALFORMED)
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidTokenError(_MALFORMED) from None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise InvalidTokenError(_MALFORMED)
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise InvalidTokenError(_MALFORMED)
        result[name] = value
    return result


def _no_constants(name: str) -> Any:
    raise InvalidTokenError(_MALFORMED)  # NaN and Infinity are not JSON


def _parse_json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidTokenError(_MALFORMED) from None
    if not isinstance(value, dict):
        raise InvalidTokenError(_MALFORMED)
    return value


def _user_fields(user: UserIdentity | Mapping[str, Any]) -> tuple[str, str, str]:
    """``(sub, email, role)`` of a UserIdentity or a user store record."""
    if isinstance(user, UserIdentity):
        return user.id, user.email, user.role
    if not isinstance(user, Mapping):
        msg = f"user must be a UserIdentity or a mapping, got {type(user).__name__}"
        raise TypeError(msg)
    user_id = user.get("id")
    if user_id is None or str(user_id) == "":
        msg = "user has no id"
        raise ValueError(msg)
    return str(user_id), str(user.get("email") or ""), str(user.get("role") or "user")


# --- plain functions (the spec's API) -----------------------------------------------------


def _codec(
    secret: str, expires_delta: timedelta, issuer: str, audience: str, leeway: float = 10
) -> TokenCodec:
    return TokenCodec(
        TokenKeys.hs256(secret),
        issuer=issuer,
        audience=audience,
        leeway_seconds=leeway,
        max_token_bytes=DEFAULT_MAX_TOKEN_BYTES,
        access_ttl=expires_delta,
        refresh_ttl=expires_delta,
    )


def create_access_token(
    user: UserIdentity | Mapping[str, Any],
    secret: str,
    expires_delta: timedelta,
    *,
    issuer: str = "app_kernel",
    audience: str = "app_kernel",
    role: str | None = None,
) -> str:
    """Sign an HS256 access token (``typ: at+jwt``) for ``user``.

    Args:
        user: a :class:`UserIdentity` or a user store record with ``id``.
        secret: the HMAC secret; any non-empty string (services use 32+ bytes).
        expires_delta: lifetime of the token.
        issuer: the ``iss`` claim.
        audience: the ``aud`` claim.
        role: the ``role`` claim; the user's role when None.

    Returns:
        The compact JWT.

    Raises:
        SettingsError: ``secret`` is empty.
        ValueError: ``user`` has no id, or ``expires_delta`` is not positive.
    """
    codec = _codec(secret, expires_delta, issuer, audience)
    return codec.encode_access(user, role=role)


def create_refresh_token(
    user: UserIdentity | Mapping[str, Any],
    secret: str,
    expires_delta: timedelta,
    *,
    family_id: str | None = None,
    issuer: str = "app_kernel",
    audience: str = "app_kernel",
) -> str:
    """Sign an HS256 refresh token for ``user``.

    Args:
        user: a :class:`UserIdentity` or a user store record with ``id``.
        secret: the HMAC secret; any non-empty string (services use 32+ bytes).
        expires_delta: lifetime of the token.
        family_id: the token family (``fam``); a new random one when None.
        issuer: the ``iss`` claim.
        audience: the ``aud`` claim.

    Returns:
        The compact JWT; :func:`decode_token` with ``expected_type="refresh"``
        gives back its ``jti`` and ``fam``.

    Raises:
        SettingsError: ``secret`` is empty.
        ValueError: ``user`` has no id, or ``expires_delta`` is not positive.
    """
    codec = _codec(secret, expires_delta, issuer, audience)
    family = family_id if family_id is not None else uuid.uuid4().hex
    token, _ = codec.encode_refresh(user, family_id=family)
    return token


def decode_token(
    token: str,
    secret: str,
    *,
    expected_type: TokenType = "access",
    issuer: str = "app_kernel",
    audience: str = "app_kernel",
    leeway_seconds: float = 10,
) -> TokenPayload:
    """Verify an HS256 token made by :func:`create_access_token` or :func:`create_refresh_token`.

    Applies every check of :meth:`TokenCodec.decode`, with an 8 KiB size cap.

    Args:
        token: the compact JWT.
        secret: the HMAC secret it was signed with.
        expected_type: ``access`` or ``refresh``; the other kind is refused.
        issuer: the required ``iss``.
        audience: the required ``aud``.
        leeway_seconds: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.

    Returns:
        The verified claims.

    Raises:
        InvalidTokenError: the token is refused.
        SettingsError: ``secret`` is empty.
    """
    # The lifetime is unused when decoding; any positive value will do.
    codec = _codec(secret, timedelta(minutes=1), issuer, audience, leeway_seconds)
    return codec.decode(token, expected_type=expected_type)
