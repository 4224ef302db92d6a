"""The kernel's tokens: round trips, and every forged or malformed token refused.

Hostile tokens are built by hand (``forge``) so that each test changes exactly
one thing about an otherwise valid token; ``test_forge_baseline_is_accepted``
proves the untouched forgery passes, so each refusal is due to its one change.
Reasons are asserted exactly: they show which check refused the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app_kernel.auth import tokens
from app_kernel.auth.models import TokenPayload, UserIdentity
from app_kernel.auth.token_cache import VerifiedTokenCache
from app_kernel.auth.tokens import (
    InvalidTokenError,
    TokenCodec,
    TokenKeys,
    create_access_token,
    create_refresh_token,
    decode_token,
)
from app_kernel.errors import KernelError, SettingsError
from app_kernel.settings import AuthSettings

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
OTHER_SECRET = "another-secret-0123456789-abcdefghijklmnopqrstuv"
USER = UserIdentity(id="user-1", email="ada@example.com", role="editor", username="ada")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def make_codec(secret: str = SECRET, **settings: Any) -> TokenCodec:
    return TokenCodec.from_settings(AuthSettings(**settings), secret)


def claims(**changes: Any) -> dict[str, Any]:
    """Valid access claims; a value of ``None`` removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-1",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "jti-1",
        "iss": "app_kernel",
        "aud": "app_kernel",
        "typ": "access",
        "role": "user",
        "email": "ada@example.com",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def header(**changes: Any) -> dict[str, Any]:
    """A valid HS256 access-token header; a value of ``None`` removes the entry."""
    base: dict[str, Any] = {"alg": "HS256", "typ": "at+jwt", "kid": "k1"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def forge(
    head: Mapping[str, Any] | None = None,
    body: object = None,
    *,
    key: bytes = SECRET.encode(),
    digest: Callable[..., Any] = hashlib.sha256,
    raw_body: str | None = None,
) -> str:
    """A compact token with any header and body, HMAC-signed with ``key``."""
    head_segment = b64json(header() if head is None else dict(head))
    body_segment = raw_body if raw_body is not None else b64json(claims() if body is None else body)
    signing_input = f"{head_segment}.{body_segment}".encode()
    signature = hmac.new(key, signing_input, digest).digest()
    return f"{head_segment}.{body_segment}.{b64(signature)}"


def refused(codec: TokenCodec, token: Any, expected_type: str = "access") -> str:
    with pytest.raises(InvalidTokenError) as info:
        codec.decode(token, expected_type=expected_type)  # type: ignore[arg-type]
    return info.value.reason


def ed25519_pems() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    return _pems(key)


def p256_pems() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _pems(key)


def _pems(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
def codec() -> TokenCodec:
    return make_codec()


@pytest.fixture
def pyjwt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each ``jwt.decode`` call did: ``"ok"`` or the PyJWT exception's name.

    Empty when the kernel refused the token before PyJWT saw it.
    """
    outcomes: list[str] = []
    real = jwt.decode

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            result = real(*args, **kwargs)
        except jwt.PyJWTError as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("ok")
        return result

    monkeypatch.setattr(jwt, "decode", spy)
    return outcomes


@pytest.fixture
def lax_pyjwt(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyJWT checking the signature only, to prove the kernel's own claim checks."""
    real = jwt.decode

    def lax(token: str, key: Any, *, algorithms: list[str], **_: Any) -> dict[str, Any]:
        checks = ("verify_exp", "verify_nbf", "verify_iat", "verify_iss", "verify_aud")
        options: Any = dict.fromkeys(checks, False)
        return real(token, key, algorithms=algorithms, options=options)

    monkeypatch.setattr(jwt, "decode", lax)


class TestRoundTrip:
    """Tokens the codec signs decode to the claims it wrote."""

    def test_access_token(self, codec: TokenCodec) -> None:
        token = codec.encode_access(USER)
        head = jwt.get_unverified_header(token)
        assert head == {"alg": "HS256", "typ": "at+jwt", "kid": "k1"}
        payload = codec.decode(token)
        assert payload.sub == "user-1"
        assert payload.typ == "access"
        assert payload.role == "editor"
        assert payload.email == "ada@example.com"
        assert payload.iss == "app_kernel"
        assert payload.aud == "app_kernel"
        assert payload.kid == "k1"
        assert payload.fam is None
        assert payload.exp - payload.nbf == 15 * 60
        assert payload.nbf <= payload.iat < payload.nbf + 1

    def test_access_token_fields_are_typed(self, codec: TokenCodec) -> None:
        payload = codec.decode(codec.encode_access(USER))
        assert isinstance(payload, TokenPayload)
        assert all(isinstance(getattr(payload, n), int) for n in ("nbf", "exp"))
        assert isinstance(payload.iat, float)
        assert abs(payload.iat - time.time()) < 5
        assert len(payload.jti) >= 16

    def test_each_token_has_its_own_jti(self, codec: TokenCodec) -> None:
        first = codec.decode(codec.encode_access(USER))
        second = codec.decode(codec.encode_access(USER))
        assert first.jti != second.jti

    def test_access_token_from_a_store_record(self, codec: TokenCodec) -> None:
        record = {"id": 42, "username": "ada", "password_hash": "$argon2id$x", "email": None}
        payload = codec.decode(codec.encode_access(record))
        assert payload.sub == "42"
        assert payload.role == "user"
        assert payload.email == ""

    def test_role_argument_overrides_the_users_role(self, codec: TokenCodec) -> None:
        payload = codec.decode(codec.encode_access(USER, role="admin"))
        assert payload.role == "admin"

    def test_access_token_may_carry_its_family(self, codec: TokenCodec) -> None:
        payload = codec.decode(codec.encode_access(USER, family_id="fam-1"))
        assert payload.fam == "fam-1"

    def test_user_without_id_is_refused(self, codec: TokenCodec) -> None:
        with pytest.raises(ValueError, match="no id"):
            codec.encode_access({"email": "ada@example.com"})
        with pytest.raises(ValueError, match="no id"):
            codec.encode_refresh({"id": ""}, family_id="f")

    def test_refresh_token(self, codec: TokenCodec) -> None:
        token, issued = codec.encode_refresh(USER, family_id="fam-1")
        assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
        payload = codec.decode(token, expected_type="refresh")
        assert payload == issued
        assert payload.typ == "refresh"
        assert payload.fam == "fam-1"
        assert payload.role is None
        assert payload.exp - payload.nbf == 30 * 86400

    def test_refresh_expiry_never_passes_the_family_end(self, codec: TokenCodec) -> None:
        now = time.time()
        _, payload = codec.encode_refresh(USER, family_id="f", now=now, family_expires_at=now + 60)
        assert payload.exp == int(now + 60)
        with pytest.raises(ValueError, match="absolute expiry"):
            codec.encode_refresh(USER, family_id="f", now=now, family_expires_at=now - 1)

    def test_plain_functions(self) -> None:
        secret = "secret"  # the spec's placeholder: short, yet no warning escapes
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            access = create_access_token(USER, secret, expires_delta=timedelta(minutes=15))
            refresh = create_refresh_token(USER, secret, expires_delta=timedelta(days=30))
            a = decode_token(access, secret)
            r = decode_token(refresh, secret, expected_type="refresh")
        assert (a.sub, a.typ, a.role, a.exp - a.nbf) == ("user-1", "access", "editor", 900)
        assert (r.sub, r.typ, r.exp - r.nbf) == ("user-1", "refresh", 30 * 86400)
        assert r.fam is not None
        assert len(r.fam) >= 16
        again = decode_token(
            create_refresh_token(USER, secret, timedelta(days=1)), secret, expected_type="refresh"
        )
        assert again.fam != r.fam
        fixed = create_refresh_token(USER, secret, timedelta(days=1), family_id="fam-9")
        assert decode_token(fixed, secret, expected_type="refresh").fam == "fam-9"

    def test_plain_functions_check_issuer_and_audience(self) -> None:
        token = create_access_token(
            USER, SECRET, timedelta(minutes=1), issuer="svc", audience="api"
        )
        assert decode_token(token, SECRET, issuer="svc", audience="api").iss == "svc"
        with pytest.raises(InvalidTokenError, match="wrong issuer"):
            decode_token(token, SECRET, audience="api")
        with pytest.raises(InvalidTokenError, match="wrong audience"):
            decode_token(token, SECRET, issuer="svc")

    def test_plain_functions_refuse_an_empty_secret(self) -> None:
        with pytest.raises(SettingsError):
            create_access_token(USER, "", timedelta(minutes=1))


class TestAlgorithm:
    """Only the pinned algorithm is accepted (RFC 8725 §2.1, §3.1).

    The kernel refuses these before PyJWT sees them (``pyjwt`` stays empty).
    """

    def test_forge_baseline_is_accepted(self, codec: TokenCodec, pyjwt: list[str]) -> None:
        assert codec.decode(forge()).sub == "user-1"
        assert pyjwt == ["ok"]

    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
    def test_alg_none_with_empty_signature(
        self, codec: TokenCodec, pyjwt: list[str], alg: str
    ) -> None:
        head = b64json(header(alg=alg))
        token = f"{head}.{b64json(claims())}."
        assert refused(codec, token) == "algorithm not allowed"
        assert pyjwt == []

    def test_missing_alg(self, codec: TokenCodec, pyjwt: list[str]) -> None:
        assert refused(codec, forge(header(alg=None))) == "algorithm not allowed"
        assert pyjwt == []

    @pytest.mark.parametrize(
        ("alg", "digest"), [("HS512", hashlib.sha512), ("HS384", hashlib.sha384)]
    )
    def test_other_hmac_algorithm_with_the_right_secret(
        self, codec: TokenCodec, pyjwt: list[str], alg: str, digest: Callable[..., Any]
    ) -> None:
        token = forge(header(alg=alg), digest=digest)
        assert refused(codec, token) == "algorithm not allowed"
        assert pyjwt == []

    def test_alg_as_a_list(self, codec: TokenCodec, pyjwt: list[str]) -> None:
        assert refused(codec, forge(header(alg=["HS256"]))) == "algorithm not allowed"
        assert pyjwt == []

    @pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
    def test_hs256_signed_with_the_public_key(self, algorithm: str, pyjwt: list[str]) -> None:
        """Key confusion: the server's public key PEM used as an HMAC secret."""
        private, public = ed25519_pems() if algorithm == "EdDSA" else p256_pems()
        codec = make_codec(algorithm=algorithm, private_key=private, public_key=public)
        for key in (public.encode(), public.strip().encode()):
            token = forge(header(alg="HS256"), key=key)
            assert refused(codec, token) == "algorithm not allowed"
        assert pyjwt == []

    def test_other_asymmetric_algorithm(self, pyjwt: list[str]) -> None:
        private, public = ed25519_pems()
        codec = make_codec(algorithm="EdDSA", private_key=private, public_key=public)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        token = jwt.encode(claims(), ec_key, algorithm="ES256", headers=header(alg="ES256"))
        assert refused(codec, token) == "algorithm not allowed"
        assert pyjwt == []


class TestTimes:
    """``exp``, ``nbf`` and ``iat`` with the configured leeway (10 s)."""

    def test_expired(self, codec: TokenCodec) -> None:
        token = codec.encode_access(USER, now=time.time() - 15 * 60 - 30)
        assert refused(codec, token) == "token expired"

    def test_expired_within_leeway_is_accepted(self, codec: TokenCodec) -> None:
        token = codec.encode_access(USER, now=time.time() - 15 * 60 - 4)
        assert codec.decode(token).sub == "user-1"

    def test_not_before_in_the_future(self, codec: TokenCodec) -> None:
        now = int(time.time())
        assert refused(codec, forge(body=claims(nbf=now + 120))) == "token not yet valid"

    def test_not_before_within_leeway_is_accepted(self, codec: TokenCodec) -> None:
        now = int(time.time())
        assert codec.decode(forge(body=claims(nbf=now + 4))).sub == "user-1"

    def test_issued_in_the_future(self, codec: TokenCodec) -> None:
        now = int(time.time())
        assert refused(codec, forge(body=claims(iat=now + 120))) == "token not yet valid"

    def test_issued_in_the_future_by_the_codec(self, codec: TokenCodec) -> None:
        token = codec.encode_access(USER, now=time.time() + 120)
        assert refused(codec, token) == "token not yet valid"

    def test_zero_leeway(self) -> None:
        codec = make_codec(leeway_seconds=0)
        token = codec.encode_access(USER, now=time.time() - 15 * 60 - 4)
        assert refused(codec, token) == "token expired"

    @pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "sub", "jti", "iss", "aud"])
    def test_missing_registered_claim(self, codec: TokenCodec, claim: str) -> None:
        assert refused(codec, forge(body=claims(**{claim: None}))) == f"missing claim {claim}"

    @pytest.mark.parametrize(
        ("claim", "kind"),
        [
            *((c, k) for c in ("exp", "nbf") for k in ("string", "float", "bool")),
            ("iat", "string"),
            ("iat", "bool"),
        ],
    )
    def test_times_must_be_numbers(self, codec: TokenCodec, claim: str, kind: str) -> None:
        """PyJWT alone accepts ``"exp": "1999999999"``; the kernel does not. ``exp`` and
        ``nbf`` are whole seconds; ``iat`` may carry milliseconds."""
        value = int(time.time()) + (300 if claim == "exp" else 0)
        odd = {"string": str(value), "float": value + 0.5, "bool": True}[kind]
        reason = refused(codec, forge(body=claims(**{claim: odd})))
        assert reason in {"invalid claims", "invalid token", "token expired"}

    def test_fractional_iat_is_accepted(self, codec: TokenCodec) -> None:
        iat = time.time() - 1.25
        assert codec.decode(forge(body=claims(iat=iat))).iat == iat

    def test_string_exp_is_refused_by_the_kernel_itself(self, codec: TokenCodec) -> None:
        exp = str(int(time.time()) + 300)
        assert refused(codec, forge(body=claims(exp=exp))) == "invalid claims"


class TestIssuerAudienceType:
    """Exact ``iss`` and ``aud``; an access token is never a refresh token."""

    @pytest.mark.parametrize(
        "iss",
        [
            "someone-else",
            "app_kernel.evil",
            "evil.app_kernel",
            "app",
            "app_kerne",
            "APP_KERNEL",
            "app_kernel ",
            "",
        ],
    )
    def test_wrong_issuer(self, codec: TokenCodec, iss: str) -> None:
        assert refused(codec, forge(body=claims(iss=iss))) in {"wrong issuer", "missing claim iss"}

    @pytest.mark.parametrize("iss", ["app_kernel.evil", "app", "kernel", "evil.app_kernel"])
    def test_issuer_substring_is_refused_by_pyjwt(
        self, codec: TokenCodec, pyjwt: list[str], iss: str
    ) -> None:
        """``issuer`` goes to PyJWT as a str (exact match), never as a container."""
        assert refused(codec, forge(body=claims(iss=iss))) == "wrong issuer"
        assert pyjwt == ["InvalidIssuerError"]

    def test_audience_list_is_refused_by_pyjwt(self, codec: TokenCodec, pyjwt: list[str]) -> None:
        """``strict_aud``: a list holding the audience is not the audience."""
        assert refused(codec, forge(body=claims(aud=["app_kernel"]))) == "wrong audience"
        assert pyjwt == ["InvalidAudienceError"]

    def test_issuer_as_a_list(self, codec: TokenCodec) -> None:
        assert refused(codec, forge(body=claims(iss=["app_kernel"]))) == "wrong issuer"

    @pytest.mark.parametrize(
        "aud", ["other", "app_kernel.evil", "app", ["app_kernel"], ["app_kernel", "other"]]
    )
    def test_wrong_audience(self, codec: TokenCodec, aud: object) -> None:
        assert refused(codec, forge(body=claims(aud=aud))) == "wrong audience"

    def test_refresh_token_used_as_access_token(self, codec: TokenCodec) -> None:
        token, _ = codec.encode_refresh(USER, family_id="f")
        assert refused(codec, token, "access") == "wrong token type"

    def test_access_token_used_as_refresh_token(self, codec: TokenCodec) -> None:
        assert refused(codec, codec.encode_access(USER), "refresh") == "wrong token type"

    def test_refresh_claim_under_an_access_header(self, codec: TokenCodec) -> None:
        """The ``typ`` claim is checked, not only the header."""
        body = claims(typ="refresh", fam="f")
        assert refused(codec, forge(header(typ="at+jwt"), body)) == "wrong token type"
        assert refused(codec, forge(header(typ="JWT"), claims()), "refresh") == "wrong token type"

    @pytest.mark.parametrize("typ_claim", [None, "reset", "verify", "ACCESS"])
    def test_other_typ_claims(self, codec: TokenCodec, typ_claim: str | None) -> None:
        assert refused(codec, forge(body=claims(typ=typ_claim))) == "wrong token type"

    @pytest.mark.parametrize("typ", [None, "JWT", "jwt", "application/jwt", "AT+JWT"])
    def test_access_token_needs_the_at_jwt_header(self, codec: TokenCodec, typ: str | None) -> None:
        assert refused(codec, forge(header(typ=typ))) == "wrong token type"

    def test_unknown_expected_type_is_a_programming_error(self, codec: TokenCodec) -> None:
        with pytest.raises(ValueError, match="expected_type"):
            codec.decode(codec.encode_access(USER), expected_type="reset")  # type: ignore[arg-type]

    def test_access_token_needs_a_role(self, codec: TokenCodec) -> None:
        assert refused(codec, forge(body=claims(role=None))) == "missing claim role"

    def test_refresh_token_needs_a_family(self, codec: TokenCodec) -> None:
        body = claims(typ="refresh", role=None)
        assert refused(codec, forge(header(typ="JWT"), body), "refresh") == "missing claim fam"


@pytest.mark.usefixtures("lax_pyjwt")
class TestKernelClaimChecks:
    """The kernel re-checks the claims itself, even if PyJWT were configured loosely."""

    def test_lax_pyjwt_still_checks_signatures(self, codec: TokenCodec) -> None:
        assert codec.decode(forge()).sub == "user-1"
        assert refused(codec, forge(key=OTHER_SECRET.encode())) == "bad signature"

    def test_expired(self, codec: TokenCodec) -> None:
        now = int(time.time())
        assert refused(codec, forge(body=claims(exp=now - 60))) == "token expired"
        assert codec.decode(forge(body=claims(exp=now - 4))).sub == "user-1"

    @pytest.mark.parametrize("claim", ["nbf", "iat"])
    def test_not_yet_valid(self, codec: TokenCodec, claim: str) -> None:
        now = int(time.time())
        assert refused(codec, forge(body=claims(**{claim: now + 60}))) == "token not yet valid"
        assert codec.decode(forge(body=claims(**{claim: now + 4}))).sub == "user-1"

    @pytest.mark.parametrize("iss", ["app_kernel.evil", "app", None, ["app_kernel"]])
    def test_issuer(self, codec: TokenCodec, iss: object) -> None:
        assert refused(codec, forge(body=claims(iss=iss))) == "wrong issuer"

    @pytest.mark.parametrize("aud", ["other", ["app_kernel"], None])
    def test_audience(self, codec: TokenCodec, aud: object) -> None:
        assert refused(codec, forge(body=claims(aud=aud))) == "wrong audience"

    @pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "sub", "jti"])
    def test_missing_claims(self, codec: TokenCodec, claim: str) -> None:
        assert refused(codec, forge(body=claims(**{claim: None}))) == "invalid claims"


class TestStructure:
    """Malformed, tampered and oversized tokens (RFC 8725 §2.6, §3.3)."""

    def test_tampered_payload(self, codec: TokenCodec) -> None:
        head, _, signature = codec.encode_access(USER).split(".")
        body = b64json(claims(role="admin"))
        assert refused(codec, f"{head}.{body}.{signature}") == "bad signature"

    def test_stripped_signature(self, codec: TokenCodec) -> None:
        head, body, _ = codec.encode_access(USER).split(".")
        assert refused(codec, f"{head}.{body}.") == "bad signature"

    def test_signed_with_another_secret(self, codec: TokenCodec) -> None:
        assert refused(codec, make_codec(OTHER_SECRET).encode_access(USER)) == "bad signature"

    @pytest.mark.parametrize("count", [1, 2, 4, 5])
    def test_wrong_number_of_segments(self, codec: TokenCodec, count: int) -> None:
        parts = codec.encode_access(USER).split(".")
        token = ".".join((parts * 2)[:count])
        assert refused(codec, token) == "malformed token"

    @pytest.mark.parametrize("token", ["", ".", "..", "...", "a.b.c", "not a token"])
    def test_junk(self, codec: TokenCodec, token: str) -> None:
        assert refused(codec, token) == "malformed token"

    @pytest.mark.parametrize("bad", ["!!!!", "eyJ=", "ey J", "eyJhbGc+", "eyJhbGc/"])
    def test_non_base64url_header(self, codec: TokenCodec, bad: str) -> None:
        _, body, signature = codec.encode_access(USER).split(".")
        assert refused(codec, f"{bad}.{body}.{signature}") == "malformed token"

    def test_non_canonical_base64_header(self, codec: TokenCodec) -> None:
        head, body, signature = forge().split(".")
        assert len(head) % 4 in (2, 3)  # so its last character has unused low bits
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        twin = head[:-1] + alphabet[alphabet.index(head[-1]) ^ 1]
        padding = "=" * (-len(head) % 4)
        same = base64.urlsafe_b64decode(twin + padding) == base64.urlsafe_b64decode(head + padding)
        assert same  # another spelling of the very same header bytes
        assert refused(codec, f"{twin}.{body}.{signature}") == "malformed token"

    @pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b'"alg"', b"null", b"\xff\xfe"])
    def test_header_not_a_json_object(self, codec: TokenCodec, raw: bytes) -> None:
        _, body, signature = forge().split(".")
        assert refused(codec, f"{b64(raw)}.{body}.{signature}") == "malformed token"

    def test_duplicate_header_names(self, codec: TokenCodec) -> None:
        raw = b'{"alg":"none","alg":"HS256","typ":"at+jwt","kid":"k1"}'
        head = b64(raw)
        body = b64json(claims())
        sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        assert refused(codec, f"{head}.{body}.{b64(sig)}") == "malformed token"

    def test_json_array_payload(self, codec: TokenCodec) -> None:
        reason = refused(codec, forge(body=[claims()]))
        assert reason in {"invalid token", "malformed token"}

    def test_duplicate_sub_in_a_validly_signed_payload(self, codec: TokenCodec) -> None:
        """PyJWT keeps the last ``sub``; the kernel refuses the token."""
        text = json.dumps(claims(), separators=(",", ":"))
        raw = text[:-1] + ',"sub":"admin-0"}'
        token = forge(raw_body=b64(raw.encode()))
        assert jwt.decode(token, SECRET, algorithms=["HS256"], audience="app_kernel")["sub"] == (
            "admin-0"
        )
        assert refused(codec, token) == "malformed token"

    def test_nan_in_payload(self, codec: TokenCodec) -> None:
        raw = json.dumps(claims(), separators=(",", ":"))[:-1] + ',"x":NaN}'
        assert refused(codec, forge(raw_body=b64(raw.encode()))) == "malformed token"

    def test_non_ascii_token(self, codec: TokenCodec) -> None:
        head, body, signature = forge().split(".")
        assert refused(codec, f"{head}.{body}é.{signature}") == "malformed token"

    @pytest.mark.parametrize("token", [None, 42, b"a.b.c", ["a", "b", "c"]])
    def test_not_a_string(self, codec: TokenCodec, token: object) -> None:
        assert refused(codec, token) == "token is not a string"

    def test_huge_token_is_refused_before_any_decoding(
        self, codec: TokenCodec, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def must_not_run(*args: object, **kwargs: object) -> None:
            raise AssertionError("decoding work on an oversized token")

        monkeypatch.setattr(tokens, "_b64url_decode", must_not_run)
        monkeypatch.setattr(base64, "urlsafe_b64decode", must_not_run)
        monkeypatch.setattr(jwt, "decode", must_not_run)
        monkeypatch.setattr(json, "loads", must_not_run)
        head, body, signature = forge().split(".")
        for size in (100 * 1024, 1024 * 1024):
            padding = "A" * size
            started = time.perf_counter()
            assert refused(codec, f"{head}.{body}{padding}.{signature}") == "token too large"
            assert time.perf_counter() - started < 0.5

    def test_size_cap_is_the_setting(self) -> None:
        codec = make_codec(max_token_bytes=1024)
        token = forge(body=claims(email="x" * 2000))
        assert refused(codec, token) == "token too large"
        assert make_codec().decode(token).email == "x" * 2000

    def test_oversized_header_is_refused(self, codec: TokenCodec) -> None:
        token = forge(header(x="y" * 2000))
        assert len(token) < codec.max_token_bytes
        assert refused(codec, token) == "header too large"

    @pytest.mark.parametrize(
        "token",
        [
            forge(header(alg="none")),
            forge(body=claims(exp=1)),
            forge(key=OTHER_SECRET.encode()),
            forge(header(kid="nope")),
            forge(body=claims(iss="evil")),
        ],
    )
    def test_reasons_never_contain_the_token(self, codec: TokenCodec, token: str) -> None:
        reason = refused(codec, token)
        for segment in token.split("."):
            if segment:
                assert segment not in reason
        assert len(reason) < 40


class TestHeaderKeys:
    """``kid`` from memory only; ``jku``/``x5u``/``jwk``/``x5c`` ignored; ``crit`` refused."""

    @pytest.mark.parametrize(
        "kid", ["k9", "../../dev/null", "' OR 1=1--", "", "k1\x00", "K1", 7, ["k1"], {"k": 1}]
    )
    def test_unknown_kid_is_refused_even_when_the_signature_is_right(
        self, codec: TokenCodec, kid: object
    ) -> None:
        assert refused(codec, forge(header(kid=kid))) == "unknown key id"

    def test_missing_kid_uses_the_current_key(self, codec: TokenCodec) -> None:
        payload = codec.decode(forge(header(kid=None)))
        assert payload.kid == "k1"

    @pytest.fixture
    def no_network(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def blocked(*args: object, **kwargs: object) -> None:
            raise AssertionError("the codec tried to fetch a key")

        monkeypatch.setattr(socket, "create_connection", blocked)
        monkeypatch.setattr(socket.socket, "connect", blocked)
        monkeypatch.setattr(urllib.request, "urlopen", blocked)

    @pytest.mark.usefixtures("no_network")
    def test_embedded_jwk_of_the_attackers_key_is_ignored(self) -> None:
        private, public = ed25519_pems()
        codec = make_codec(algorithm="EdDSA", private_key=private, public_key=public)
        attacker = Ed25519PrivateKey.generate()
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(attacker.public_key()))
        for head in (
            header(alg="EdDSA", jwk=jwk, kid=None),
            header(alg="EdDSA", jwk=jwk),
            header(alg="EdDSA", jku="https://attacker.example/jwks.json", kid="attacker"),
            header(alg="EdDSA", x5u="https://attacker.example/cert.pem"),
            header(alg="EdDSA", x5c=["MIIBattacker"]),
        ):
            token = jwt.encode(claims(), attacker, algorithm="EdDSA", headers=head)
            reason = refused(codec, token)
            assert reason in {"bad signature", "unknown key id"}
            if "kid" not in head or head["kid"] == "k1":
                assert reason == "bad signature"

    @pytest.mark.usefixtures("no_network")
    def test_embedded_hmac_jwk_is_ignored(self, codec: TokenCodec) -> None:
        attacker_secret = b"attacker-secret-0123456789-abcdefghijkl"
        jwk = {"kty": "oct", "k": b64(attacker_secret)}
        token = forge(header(jwk=jwk, kid=None), key=attacker_secret)
        assert refused(codec, token) == "bad signature"

    @pytest.mark.usefixtures("no_network")
    def test_key_urls_on_a_valid_token_are_never_fetched(self, codec: TokenCodec) -> None:
        head = header(jku="https://attacker.example/jwks", x5u="https://attacker.example/x")
        assert codec.decode(forge(head)).sub == "user-1"

    @pytest.mark.parametrize("crit", [["x-unknown"], ["b64"], ["exp"], [], "b64", None])
    def test_crit_header_is_refused(self, codec: TokenCodec, crit: object) -> None:
        head = header()
        head["crit"] = crit
        if isinstance(crit, list) and crit:
            head[crit[0]] = True
        assert refused(codec, forge(head)) == "critical header not supported"

    def test_crit_b64_passes_pyjwt_but_not_the_kernel(self, codec: TokenCodec) -> None:
        head = header(crit=["b64"], b64=True)
        token = forge(head)
        assert jwt.decode(token, SECRET, algorithms=["HS256"], audience="app_kernel")
        assert refused(codec, token) == "critical header not supported"


class TestKeys:
    """Key rotation, asymmetric keys and key configuration errors."""

    def test_rotation_overlap_then_retirement(self) -> None:
        first = make_codec("secret-one-0123456789-abcdefghijklmnop", key_id="k1")
        old_token = first.encode_access(USER)
        second = make_codec(
            "secret-two-0123456789-abcdefghijklmnop",
            key_id="k2",
            previous_keys={"k1": "secret-one-0123456789-abcdefghijklmnop"},
        )
        assert second.decode(old_token).kid == "k1"
        new_token = second.encode_access(USER)
        assert jwt.get_unverified_header(new_token)["kid"] == "k2"
        assert second.decode(new_token).kid == "k2"
        assert refused(first, new_token) == "unknown key id"
        third = make_codec(
            "secret-three-0123456789-abcdefghijklmno",
            key_id="k3",
            previous_keys={"k2": "secret-two-0123456789-abcdefghijklmnop"},
        )
        assert third.decode(new_token).kid == "k2"
        assert refused(third, old_token) == "unknown key id"

    def test_kid_of_one_key_signed_with_another(self) -> None:
        codec = make_codec(SECRET, key_id="k2", previous_keys={"k1": OTHER_SECRET})
        assert refused(codec, forge(header(kid="k1"))) == "bad signature"

    def test_previous_key_cannot_reuse_the_current_kid(self) -> None:
        with pytest.raises(SettingsError, match="previous_keys"):
            make_codec(previous_keys={"k1": OTHER_SECRET})

    def test_empty_secrets_are_refused(self) -> None:
        with pytest.raises(SettingsError, match="token_secret"):
            make_codec("")
        with pytest.raises(SettingsError, match=r"previous_keys\['k0'\]"):
            make_codec(previous_keys={"k0": ""})

    def test_pem_shaped_hmac_secret_is_refused(self) -> None:
        _, public = ed25519_pems()
        with pytest.raises(SettingsError) as info:
            make_codec(public)
        assert "BEGIN" not in str(info.value)

    def test_repr_shows_no_key_material(self) -> None:
        keys = TokenKeys.hs256(SECRET, key_id="k2", previous_keys={"k1": OTHER_SECRET})
        assert SECRET not in repr(keys)
        assert OTHER_SECRET not in repr(keys)
        assert "k1" in repr(keys)

    @pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
    def test_asymmetric_round_trip(self, algorithm: str) -> None:
        private, public = ed25519_pems() if algorithm == "EdDSA" else p256_pems()
        codec = make_codec(algorithm=algorithm, private_key=private, public_key=public)
        token = codec.encode_access(USER)
        assert jwt.get_unverified_header(token)["alg"] == algorithm
        assert codec.decode(token).sub == "user-1"
        refresh, _ = codec.encode_refresh(USER, family_id="f")
        assert codec.decode(refresh, expected_type="refresh").fam == "f"
        verifier = jwt.decode(token, public, algorithms=[algorithm], audience="app_kernel")
        assert verifier["sub"] == "user-1"

    @pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
    def test_asymmetric_rotation_with_previous_public_key(self, algorithm: str) -> None:
        pems = ed25519_pems if algorithm == "EdDSA" else p256_pems
        old_private, old_public = pems()
        new_private, new_public = pems()
        old = make_codec(
            algorithm=algorithm, private_key=old_private, public_key=old_public, key_id="k1"
        )
        new = make_codec(
            algorithm=algorithm,
            private_key=new_private,
            public_key=new_public,
            key_id="k2",
            previous_keys={"k1": old_public},
        )
        assert new.decode(old.encode_access(USER)).kid == "k1"
        assert refused(old, new.encode_access(USER)) == "unknown key id"

    @pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
    def test_asymmetric_token_from_another_key(self, algorithm: str) -> None:
        pems = ed25519_pems if algorithm == "EdDSA" else p256_pems
        private, public = pems()
        ours = make_codec(algorithm=algorithm, private_key=private, public_key=public)
        private, public = pems()
        theirs = make_codec(algorithm=algorithm, private_key=private, public_key=public)
        assert refused(ours, theirs.encode_access(USER)) == "bad signature"

    def test_asymmetric_key_errors(self) -> None:
        ed_private, ed_public = ed25519_pems()
        ec_private, ec_public = p256_pems()
        p384_private, p384_public = _pems(ec.generate_private_key(ec.SECP384R1()))
        cases: list[tuple[dict[str, Any], str]] = [
            ({"algorithm": "EdDSA"}, "private_key"),
            ({"private_key": "not a pem", "public_key": ed_public}, "auth.private_key"),
            ({"private_key": ed_private, "public_key": "not a pem"}, "auth.public_key"),
            ({"private_key": ec_private, "public_key": ec_public}, "Ed25519"),
            ({"private_key": ed_private, "public_key": ec_public}, "does not match"),
            ({"private_key": ed_private, "public_key": ed25519_pems()[1]}, "does not match"),
            (
                {"private_key": ed_private, "public_key": ed_public, "previous_keys": {"k0": "x"}},
                r"previous_keys\['k0'\]",
            ),
            (
                {
                    "private_key": ed_private,
                    "public_key": ed_public,
                    "previous_keys": {"k0": ec_public},
                },
                "Ed25519",
            ),
            (
                {"algorithm": "ES256", "private_key": ed_private, "public_key": ed_public},
                "P-256",
            ),
            (
                {"algorithm": "ES256", "private_key": p384_private, "public_key": p384_public},
                "P-256",
            ),
        ]
        for settings, fragment in cases:
            with pytest.raises(SettingsError, match=fragment) as info:
                make_codec(**({"algorithm": "EdDSA"} | settings))
            assert "PRIVATE KEY" not in str(info.value)
            assert "PUBLIC KEY" not in str(info.value)

    def test_invalid_token_error_is_a_kernel_error(self) -> None:
        assert issubclass(InvalidTokenError, KernelError)
        assert InvalidTokenError("token expired").reason == "token expired"

    def test_codec_parameters_are_checked(self) -> None:
        keys = TokenKeys.hs256(SECRET)
        good: dict[str, Any] = {
            "issuer": "i",
            "audience": "a",
            "leeway_seconds": 0,
            "max_token_bytes": 1024,
            "access_ttl": timedelta(minutes=1),
            "refresh_ttl": timedelta(days=1),
        }
        TokenCodec(keys, **good)
        for change in (
            {"access_ttl": timedelta(0)},
            {"refresh_ttl": timedelta(seconds=-1)},
            {"leeway_seconds": -1},
            {"max_token_bytes": 0},
            {"issuer": ""},
        ):
            with pytest.raises(ValueError, match="must"):
                TokenCodec(keys, **(good | change))


class TestVerifiedTokenCache:
    """A verified access token is answered from memory until it expires, never longer."""

    def test_second_decode_skips_verification(
        self, codec: TokenCodec, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        token = codec.encode_access(USER)
        first = codec.decode(token)
        calls: list[str] = []
        real = jwt.decode
        monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append("x") or real(*a, **k))
        assert codec.decode(token) == first
        assert calls == []

    def test_cached_token_expires_on_time(
        self, codec: TokenCodec, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        token = codec.encode_access(USER)
        expires = codec.decode(token).exp
        # One second past exp plus the 10 s leeway: a fresh decode would refuse it.
        monkeypatch.setattr(tokens.time, "time", lambda: expires + 11.0)
        assert refused(codec, token) == "token expired"

    def test_altered_token_is_verified_afresh(self, codec: TokenCodec) -> None:
        token = codec.encode_access(USER)
        codec.decode(token)
        head, body, signature = token.split(".")
        flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
        assert refused(codec, f"{head}.{body}.{flipped}") in {"bad signature", "malformed token"}

    def test_refresh_tokens_are_not_cached(self, codec: TokenCodec) -> None:
        token, _ = codec.encode_refresh(USER, family_id="fam-1")
        codec.decode(token, expected_type="refresh")
        assert len(codec._verified) == 0
        # And a cached access token never answers for the refresh kind.
        access = codec.encode_access(USER)
        codec.decode(access)
        assert refused(codec, access, expected_type="refresh") == "wrong token type"

    def test_cache_is_bounded(self) -> None:
        cache = VerifiedTokenCache(max_entries=3)
        payload = make_codec().decode(make_codec().encode_access(USER))
        for n in range(10):
            cache.put(f"token-{n}", payload)
        assert len(cache) == 3
        assert cache.get("token-0", time.time()) is None
        assert cache.get("token-9", time.time()) == payload
