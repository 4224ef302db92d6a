"""External mode: accept JWTs issued by an OpenID Connect provider.

The provider's signing keys come from its JWKS URL, fetched with httpx: one
fixed URL, redirects refused, a timeout on the whole download, a size cap and a
cache. Nothing in a token can point at another key source (``jku``, ``x5u``,
``jwk`` and ``x5c`` are ignored); a token names its key only by ``kid``.

A token whose ``kid`` is unknown triggers one re-fetch (the provider may have
rotated its keys), at most once per ``UNKNOWN_KID_REFETCH_SECONDS``, so tokens
with made-up ``kid`` values cannot turn the kernel into a load generator
against the provider.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import jwt
import structlog

from app_kernel.auth.models import UserIdentity
from app_kernel.errors import KernelError, SettingsError

if TYPE_CHECKING:
    from app_kernel.settings import AuthSettings

__all__ = ("InvalidExternalToken", "OidcVerifier")

UNKNOWN_KID_REFETCH_SECONDS = 30.0
"""Least time between two JWKS fetches caused by tokens with an unknown ``kid``."""
FAILED_FETCH_RETRY_SECONDS = 5.0
"""After a failed JWKS fetch, verifications wait this long before fetching again."""
MAX_JWKS_KEYS = 100
"""Keys past this many in a JWKS are ignored."""

_ASYMMETRIC_ALGORITHMS = {
    # algorithm: (kty, curve or None)
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]
_MAX_KID_LENGTH = 256
_LOOPBACK_NAMES = ("localhost",)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")

_log = structlog.stdlib.get_logger("app_kernel.auth")


class InvalidExternalToken(KernelError):
    """An external token was refused: malformed, badly signed, expired, for
    another issuer or audience, or its key could not be found.

    The message says why, for logs; it never contains the token.
    """


class _JwksError(Exception):
    """The JWKS could not be fetched or read."""


@dataclass(frozen=True, slots=True)
class _KeySet:
    keys: Mapping[str, Mapping[str, jwt.PyJWK]]  # kid -> algorithm -> key
    fetched_at: float


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _b64url_json(segment: str) -> Any:
    """Decode one base64url JWT segment holding a JSON object; duplicate keys refused."""
    if not _BASE64URL.fullmatch(segment):
        msg = "not base64url"
        raise ValueError(msg)
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        msg = "not base64url"
        raise ValueError(msg) from exc

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            msg = "duplicate member"
            raise ValueError(msg)
        return result

    return json.loads(raw, object_pairs_hook=no_duplicates)


def _claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """``claims[path]``, else the dotted path (``realm_access.roles``) walked down."""
    if path in claims:
        # Namespaced claims such as "https://example.com/roles" contain dots.
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _role_from(value: Any) -> str:
    if isinstance(value, str):
        return value if value.strip() else "user"
    if isinstance(value, list) and "admin" in [v for v in value if isinstance(v, str)]:
        return "admin"
    return "user"


class OidcVerifier:
    """Verify access or ID tokens of one OpenID Connect issuer.

    Args:
        issuer: the exact ``iss`` accepted (no prefix or substring match).
        jwks_url: the issuer's JWKS URL; https, or http on a loopback host.
        audience: the ``aud`` the tokens must carry.
        role_claim: the claim holding the role: a string, or a list in which
            ``admin`` makes the user an admin. A dotted path such as
            ``realm_access.roles`` (Keycloak) reaches into nested objects.
        algorithms: accepted signature algorithms; asymmetric only.
        cache_seconds: how long fetched keys are reused.
        leeway_seconds: clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
        http_timeout_seconds: limit on the whole JWKS download.
        max_jwks_bytes: larger JWKS answers are refused.
        max_token_bytes: longer tokens are refused before any decoding.
        client: an httpx client to fetch with (not closed by :meth:`aclose`);
            by default the verifier makes and owns one.

    Raises:
        SettingsError: an empty issuer, audience or URL, a URL that is not
            https (or http on loopback), or an algorithm that is not asymmetric.
    """

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str,
        audience: str,
        role_claim: str = "role",
        algorithms: Sequence[str],
        cache_seconds: float = 600,
        leeway_seconds: int = 10,
        http_timeout_seconds: float = 5.0,
        max_jwks_bytes: int = 1_000_000,
        max_token_bytes: int = 16384,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        for field, value in (
            ("issuer", issuer),
            ("audience", audience),
            ("role_claim", role_claim),
        ):
            if not value:
                msg = f"OidcVerifier.{field}: expected a non-empty string, got {value!r}"
                raise SettingsError(msg)
        url = urlsplit(jwks_url)
        if not url.hostname or not (
            url.scheme == "https" or (url.scheme == "http" and _is_loopback(url.hostname))
        ):
            msg = (
                "OidcVerifier.jwks_url: expected an https:// URL (http:// only on a "
                f"loopback host), got {jwks_url!r}"
            )
            raise SettingsError(msg)
        bad = [alg for alg in algorithms if alg not in _ASYMMETRIC_ALGORITHMS]
        if bad or not algorithms or isinstance(algorithms, str):
            msg = (
                f"OidcVerifier.algorithms: expected asymmetric algorithms from "
                f"{sorted(_ASYMMETRIC_ALGORITHMS)}, got {algorithms!r}"
            )
            raise SettingsError(msg)
        positive = (cache_seconds, http_timeout_seconds, max_jwks_bytes, max_token_bytes)
        if min(positive) <= 0 or leeway_seconds < 0:
            msg = (
                "OidcVerifier: cache_seconds, http_timeout_seconds, max_jwks_bytes and "
                "max_token_bytes must be positive, leeway_seconds 0 or more"
            )
            raise SettingsError(msg)
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.audience = audience
        self.role_claim = role_claim
        self.algorithms = tuple(algorithms)
        self._cache_seconds = float(cache_seconds)
        self._leeway = leeway_seconds
        self._timeout = http_timeout_seconds
        self._max_jwks_bytes = max_jwks_bytes
        self._max_token_bytes = max_token_bytes
        self._owns_client = client is None
        # Made on first use, in a thread: loading the CA bundle would block the loop.
        self._client = client
        self._lock = asyncio.Lock()
        self._key_set: _KeySet | None = None
        # JWKS fetches finished, with or without success: a caller that waited for
        # the lock sees it change and shares the outcome instead of fetching again.
        self._attempts = 0
        self._last_failure = float("-inf")
        self._last_unknown_kid_fetch = float("-inf")

    @classmethod
    def from_settings(
        cls, auth: AuthSettings, *, client: httpx.AsyncClient | None = None
    ) -> OidcVerifier:
        """Build from the ``oidc_*`` fields of :class:`AuthSettings`.

        Raises:
            SettingsError: ``auth.oidc_issuer``, ``auth.oidc_jwks_url`` or
                ``auth.oidc_audience`` is missing (the message names each).
        """
        missing = [
            f"auth.{name}"
            for name in ("oidc_issuer", "oidc_jwks_url", "oidc_audience")
            if not getattr(auth, name)
        ]
        if missing or not (auth.oidc_issuer and auth.oidc_jwks_url and auth.oidc_audience):
            msg = f"{', '.join(missing)}: required when features.auth_mode is 'external'"
            raise SettingsError(msg)
        return cls(
            issuer=auth.oidc_issuer,
            jwks_url=auth.oidc_jwks_url,
            audience=auth.oidc_audience,
            role_claim=auth.oidc_role_claim,
            algorithms=auth.oidc_algorithms,
            cache_seconds=auth.oidc_jwks_cache_seconds,
            leeway_seconds=auth.leeway_seconds,
            client=client,
        )

    async def verify(self, token: str) -> UserIdentity:
        """The identity carried by a valid token.

        Raises:
            InvalidExternalToken: for any reason the token is not accepted,
                including keys that could not be fetched.
        """
        if not isinstance(token, str) or len(token) > self._max_token_bytes:
            msg = "token is too long"
            raise InvalidExternalToken(msg)
        if not token.isascii():
            msg = "token is not ASCII"
            raise InvalidExternalToken(msg)
        alg, kid = self._read_header(token)
        key = await self._key_for(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            msg = f"token refused: {type(exc).__name__}"
            raise InvalidExternalToken(msg) from None
        if claims.get("iss") != self.issuer:  # PyJWT matches exactly too; kept as a guard
            msg = "token refused: InvalidIssuerError"
            raise InvalidExternalToken(msg)
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            msg = "token refused: empty sub"
            raise InvalidExternalToken(msg)
        email = claims.get("email")
        username = claims.get("preferred_username")
        return UserIdentity(
            id=subject,
            email=email if isinstance(email, str) else "",
            username=username if isinstance(username, str) else "",
            role=_role_from(_claim_at(claims, self.role_claim)),
            auth_method="external",
        )

    async def aclose(self) -> None:
        """Close the HTTP client if the verifier created it."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # --- header ---------------------------------------------------------------------

    def _read_header(self, token: str) -> tuple[str, str]:
        segments = token.split(".")
        if len(segments) != 3:
            msg = "token is not a signed JWT (three segments)"
            raise InvalidExternalToken(msg)
        try:
            header = _b64url_json(segments[0])
        except ValueError:
            msg = "token header is not base64url JSON"
            raise InvalidExternalToken(msg) from None
        if not isinstance(header, dict):
            msg = "token header is not a JSON object"
            raise InvalidExternalToken(msg)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            msg = f"token algorithm {str(alg)[:20]!r} is not accepted"
            raise InvalidExternalToken(msg)
        if "crit" in header:
            # RFC 7515 §4.1.11: extensions the verifier does not understand must fail.
            msg = "token header has 'crit'"
            raise InvalidExternalToken(msg)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
            msg = "token header has no usable 'kid'"
            raise InvalidExternalToken(msg)
        # jku, x5u, jwk and x5c are deliberately never read.
        return alg, kid

    # --- keys -----------------------------------------------------------------------

    async def _key_for(self, kid: str, alg: str) -> jwt.PyJWK:
        attempts = self._attempts
        key_set = self._key_set
        refreshed = False
        if key_set is None or time.monotonic() - key_set.fetched_at >= self._cache_seconds:
            key_set = await self._refresh(attempts, unknown_kid=False)
            refreshed = True
        by_alg = key_set.keys.get(kid)
        if by_alg is None and not refreshed:
            # The issuer may have rotated its keys since the last fetch.
            key_set = await self._refresh(attempts, unknown_kid=True)
            by_alg = key_set.keys.get(kid)
        if by_alg is None:
            msg = "token 'kid' is not in the issuer's key set"
            raise InvalidExternalToken(msg)
        key = by_alg.get(alg)
        if key is None:
            msg = f"token algorithm {alg} does not match its key"
            raise InvalidExternalToken(msg)
        return key

    async def _refresh(self, seen_attempts: int, *, unknown_kid: bool) -> _KeySet:
        """Fetch the JWKS unless another caller did while this one waited."""
        async with self._lock:
            now = time.monotonic()
            current = self._key_set
            if self._attempts != seen_attempts:
                # A fetch ran while this caller waited for the lock: share its outcome.
                return self._usable(current)
            if now - self._last_failure < FAILED_FETCH_RETRY_SECONDS:
                return self._usable(current)
            if unknown_kid:
                if now - self._last_unknown_kid_fetch < UNKNOWN_KID_REFETCH_SECONDS:
                    return self._usable(current)
                self._last_unknown_kid_fetch = now
            try:
                keys = self._parse_jwks(await self._download())
            except _JwksError as exc:
                self._attempts += 1
                self._last_failure = time.monotonic()
                _log.warning("oidc_jwks_fetch_failed", url=self.jwks_url, reason=str(exc))
                return self._usable(current)
            self._attempts += 1
            self._key_set = _KeySet(keys=keys, fetched_at=now)
            return self._key_set

    def _usable(self, key_set: _KeySet | None) -> _KeySet:
        # After a failed refresh the previous keys serve one more cache period at most.
        if key_set is None or time.monotonic() - key_set.fetched_at >= 2 * self._cache_seconds:
            msg = "the issuer's signing keys could not be fetched"
            raise InvalidExternalToken(msg)
        return key_set

    async def _download(self) -> bytes:
        headers = {
            "Accept": "application/jwk-set+json, application/json",
            # A compressed body could expand far past the size cap before it is counted.
            "Accept-Encoding": "identity",
        }
        if self._client is None:
            self._client = await asyncio.to_thread(
                httpx.AsyncClient, follow_redirects=False, timeout=self._timeout
            )
        client = self._client
        body = bytearray()
        try:
            async with (
                asyncio.timeout(self._timeout),
                client.stream(
                    "GET",
                    self.jwks_url,
                    headers=headers,
                    follow_redirects=False,
                    timeout=self._timeout,
                ) as response,
            ):
                if response.status_code != 200:
                    msg = f"HTTP {response.status_code}"
                    raise _JwksError(msg)
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    msg = f"unexpected content-encoding {encoding[:20]!r}"
                    raise _JwksError(msg)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_jwks_bytes:
                    msg = f"body over {self._max_jwks_bytes} bytes"
                    raise _JwksError(msg)
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > self._max_jwks_bytes:
                        msg = f"body over {self._max_jwks_bytes} bytes"
                        raise _JwksError(msg)
        except TimeoutError:
            msg = f"no complete answer within {self._timeout} s"
            raise _JwksError(msg) from None
        except httpx.HTTPError as exc:
            msg = f"{type(exc).__name__}"
            raise _JwksError(msg) from None
        return bytes(body)

    def _parse_jwks(self, body: bytes) -> dict[str, dict[str, jwt.PyJWK]]:
        try:
            document = json.loads(body)
        except ValueError:
            msg = "body is not JSON"
            raise _JwksError(msg) from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            msg = 'expected a JSON object {"keys": [...]}'
            raise _JwksError(msg)
        entries = document["keys"]
        if len(entries) > MAX_JWKS_KEYS:
            _log.warning("oidc_jwks_too_many_keys", url=self.jwks_url, count=len(entries))
        keys: dict[str, dict[str, jwt.PyJWK]] = {}
        for entry in entries[:MAX_JWKS_KEYS]:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            if not isinstance(kid, str) or not kid or kid in keys:
                continue  # no kid, or a duplicate: a token could not name it unambiguously
            if entry.get("use", "sig") != "sig":
                continue
            by_alg = self._keys_of(entry)
            if by_alg:
                keys[kid] = by_alg
        if not keys:
            _log.warning("oidc_jwks_no_usable_keys", url=self.jwks_url)
        return keys

    def _keys_of(self, entry: dict[str, Any]) -> dict[str, jwt.PyJWK]:
        """The entry as a key for each accepted algorithm it can verify."""
        declared = entry.get("alg")
        if declared is not None:
            candidates = [declared] if declared in self.algorithms else []
        else:
            candidates = list(self.algorithms)
        by_alg: dict[str, jwt.PyJWK] = {}
        for alg in candidates:
            kty, curve = _ASYMMETRIC_ALGORITHMS[alg]
            if entry.get("kty") != kty or (curve is not None and entry.get("crv") != curve):
                continue
            try:
                by_alg[alg] = jwt.PyJWK(entry, algorithm=alg)
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
        return by_alg
