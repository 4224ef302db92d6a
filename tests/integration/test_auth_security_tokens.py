"""Forged, malformed and misused tokens over HTTP: always a 401 problem, never a 500.

Every forged token starts from the claims of a real login, so a token the kernel
should refuse would be accepted if the check it targets were removed. Checklist
rows T1-T14, T19 and H9 (research/auth-security.md section 2).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from _app_factory import SECURITY_HEADERS
from _auth_helpers import (
    AUTH,
    INVALID,
    OPTIONAL,
    SECRET,
    WHOAMI,
    add_user,
    assert_unauthorized,
    auth_app,
    b64url,
    bearer,
    client,
    collector_paused,  # noqa: F401 - autouse fixture
    forge,
    gc_paused,
    kernel_settings,
    login,
    running,
    token_parts,
)
from app_kernel.errors import SettingsError

ACCESS_HEADER = {"alg": "HS256", "typ": "at+jwt", "kid": "k1"}
ATTACKER_KEY = b"an attacker's own key, 32 bytes or more"


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """One service for the whole module: refusing a token changes no state."""
    return auth_app(kernel_settings(tmp_path_factory.mktemp("tokens")))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(shared_app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    # Module-scoped, so set up before (and torn down after) the per-test GC pause.
    async with AsyncExitStack() as stack:
        with gc_paused():
            kernel = await stack.enter_async_context(running(shared_app))
            http = await stack.enter_async_context(client(shared_app))
            await add_user(kernel, "alice")
            pair = await login(http, "alice")
        yield http, pair
        with gc_paused():
            await stack.aclose()


@pytest.fixture
def http(shared: tuple[httpx.AsyncClient, dict[str, Any]]) -> httpx.AsyncClient:
    return shared[0]


@pytest.fixture
def pair(shared: tuple[httpx.AsyncClient, dict[str, Any]]) -> dict[str, Any]:
    """alice's token pair from a real login."""
    return shared[1]


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    """Run ``app`` with alice logged in: her client and token pair."""
    async with running(app) as kernel, client(app) as http:
        await add_user(kernel, "alice")
        yield http, await login(http, "alice")


@pytest.fixture
def claims(pair: dict[str, Any]) -> dict[str, Any]:
    """The claims of alice's access token, to forge variants of."""
    return token_parts(pair["access_token"])[1]


async def whoami(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get(WHOAMI, headers=bearer(token))


async def test_a_token_forged_with_the_real_secret_is_accepted(
    http: httpx.AsyncClient, claims: dict[str, Any]
) -> None:
    """The control for this module: the forging helper makes tokens the kernel accepts."""
    response = await whoami(http, forge(ACCESS_HEADER, claims))

    assert response.status_code == 200
    assert response.json()["id"] == claims["sub"]


class TestAlgorithm:
    """T1-T3: one pinned algorithm; ``none``, other HMACs and key confusion are refused."""

    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
    async def test_unsigned_token_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any], alg: str
    ) -> None:
        token = forge({**ACCESS_HEADER, "alg": alg}, claims, key=None)

        assert_unauthorized(await whoami(http, token))

    async def test_alg_none_with_a_signature_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        assert_unauthorized(await whoami(http, forge({**ACCESS_HEADER, "alg": "none"}, claims)))

    async def test_hs256_header_without_a_signature_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, claims, key=None)))

    @pytest.mark.parametrize(("alg", "digest"), [("HS512", "sha512"), ("HS384", "sha384")])
    async def test_other_hmac_with_the_right_secret_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any], alg: str, digest: str
    ) -> None:
        token = forge({**ACCESS_HEADER, "alg": alg}, claims, digest=digest)

        assert_unauthorized(await whoami(http, token))

    async def test_header_without_alg_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        header = {k: v for k, v in ACCESS_HEADER.items() if k != "alg"}

        assert_unauthorized(await whoami(http, forge(header, claims)))


@pytest.fixture
def ed25519_pems() -> tuple[str, str]:
    """A fresh Ed25519 key pair as PEM text: (private, public)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem.decode(), public_pem.decode()


class TestKeyConfusion:
    """T2: on an EdDSA service, an HS256 token keyed with the public key is refused."""

    @pytest.fixture
    def app(self, tmp_path: Path, ed25519_pems: tuple[str, str]) -> FastAPI:
        private_pem, public_pem = ed25519_pems
        settings = kernel_settings(
            tmp_path, algorithm="EdDSA", private_key=private_pem, public_key=public_pem
        )
        return auth_app(settings)

    @pytest_asyncio.fixture(loop_scope="module")
    async def shared(self, app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
        async with served(app) as shared:
            yield shared

    async def test_the_real_eddsa_token_works(
        self, http: httpx.AsyncClient, pair: dict[str, Any]
    ) -> None:
        assert token_parts(pair["access_token"])[0]["alg"] == "EdDSA"
        assert (await whoami(http, pair["access_token"])).status_code == 200

    @pytest.mark.parametrize("alg", ["HS256", "EdDSA"])
    async def test_hmac_signed_with_the_public_key_is_refused(
        self,
        http: httpx.AsyncClient,
        claims: dict[str, Any],
        ed25519_pems: tuple[str, str],
        alg: str,
    ) -> None:
        header = {**ACCESS_HEADER, "alg": alg}
        public_pem = ed25519_pems[1]

        for key in (public_pem.encode(), public_pem.strip().encode()):
            assert_unauthorized(await whoami(http, forge(header, claims, key=key)))

    async def test_hmac_signed_with_the_secret_setting_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        """The settings still hold an HMAC secret; an EdDSA service must not accept it."""
        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, claims)))


class TestSignature:
    """T7 and T19: any change to the signed bytes, or their encoding, is refused."""

    async def test_token_signed_with_another_secret_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, claims, key=ATTACKER_KEY)))

    async def test_tampered_payload_is_refused(
        self, http: httpx.AsyncClient, pair: dict[str, Any], claims: dict[str, Any]
    ) -> None:
        header, _, signature = pair["access_token"].split(".")
        tampered = b64url({**claims, "role": "admin"})

        assert_unauthorized(await whoami(http, f"{header}.{tampered}.{signature}"))

    @pytest.mark.parametrize(
        "shape",
        ["stripped", "two_segments", "four_segments", "not_base64", "padded", "empty_segments"],
    )
    async def test_malformed_token_is_refused(
        self, http: httpx.AsyncClient, pair: dict[str, Any], shape: str
    ) -> None:
        header, payload, signature = pair["access_token"].split(".")
        token = {
            "stripped": f"{header}.{payload}.",
            "two_segments": f"{header}.{payload}",
            "four_segments": f"{header}.{payload}.{signature}.{signature}",
            "not_base64": f"{header}.{payload[:-2]}!*.{signature}",
            "padded": f"{header}.{payload}==.{signature}",
            "empty_segments": "..",
        }[shape]

        assert_unauthorized(await whoami(http, token))

    async def test_array_payload_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, [claims])))

    async def test_duplicate_sub_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        """A parser keeping the last ``sub`` would accept this correctly signed token."""
        rest = ",".join(f'"{k}":{_json(v)}' for k, v in claims.items() if k != "sub")
        payload = f'{{"sub":"someone-else",{rest},"sub":"{claims["sub"]}"}}'

        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, b64url(payload))))

    async def test_non_canonical_base64_signature_is_refused(
        self, http: httpx.AsyncClient, pair: dict[str, Any]
    ) -> None:
        """T19: the same signature bytes spelt differently (unused low bits set)."""
        header, payload, signature = pair["access_token"].split(".")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet[alphabet.index(signature[-1]) ^ 1]
        respelt = signature[:-1] + last

        def raw(segment: str) -> bytes:
            return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))

        assert raw(respelt) == raw(signature)  # a lenient decoder sees the same signature
        assert_unauthorized(await whoami(http, f"{header}.{payload}.{respelt}"))


class TestClaims:
    """T4-T6: time, issuer, audience and token type are enforced exactly."""

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param({"exp": -60}, id="expired"),
            pytest.param({"nbf": 120}, id="nbf-in-future"),
            pytest.param({"iat": 120}, id="iat-in-future"),
        ],
    )
    async def test_time_claims_outside_the_leeway_are_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any], change: dict[str, int]
    ) -> None:
        now = int(time.time())
        forged = {**claims, **{name: now + offset for name, offset in change.items()}}

        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, forged)))

    async def test_expiry_within_the_leeway_is_accepted(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        forged = {**claims, "exp": int(time.time()) - 3}

        assert (await whoami(http, forge(ACCESS_HEADER, forged))).status_code == 200

    @pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "sub", "jti", "iss", "aud", "typ"])
    async def test_missing_claim_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any], claim: str
    ) -> None:
        forged = {k: v for k, v in claims.items() if k != claim}

        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, forged)))

    @pytest.mark.parametrize(
        ("claim", "value"),
        [
            ("iss", "evil"),
            ("iss", "app_kerne"),
            ("iss", "app_kernel.evil"),
            ("iss", ["app_kernel"]),
            ("aud", "other-service"),
            ("aud", "app_kerne"),
            ("aud", ["app_kernel", "other-service"]),
            ("exp", "9999999999"),
            ("exp", 9999999999.5),
            ("sub", 123),
        ],
    )
    async def test_wrong_issuer_audience_or_claim_type_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any], claim: str, value: Any
    ) -> None:
        assert_unauthorized(await whoami(http, forge(ACCESS_HEADER, {**claims, claim: value})))

    async def test_refresh_token_is_not_an_access_token(
        self, http: httpx.AsyncClient, pair: dict[str, Any]
    ) -> None:
        assert_unauthorized(await whoami(http, pair["refresh_token"]))

    async def test_access_token_is_not_a_refresh_token(self, http: httpx.AsyncClient) -> None:
        pair = await login(http, "alice")  # its own family: this test rotates it

        response = await http.post(f"{AUTH}/refresh", json={"refresh_token": pair["access_token"]})

        assert_unauthorized(response)
        # The refresh token still works: the refused attempt changed nothing.
        again = await http.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
        assert again.status_code == 200

    @pytest.mark.parametrize(
        ("header_typ", "claim_typ"),
        [("at+jwt", "refresh"), ("JWT", "access"), ("jwt", "access"), (None, "access")],
    )
    async def test_token_types_cannot_be_mixed(
        self,
        http: httpx.AsyncClient,
        claims: dict[str, Any],
        header_typ: str | None,
        claim_typ: str,
    ) -> None:
        header = {**ACCESS_HEADER, "typ": header_typ}
        if header_typ is None:
            del header["typ"]

        assert_unauthorized(await whoami(http, forge(header, {**claims, "typ": claim_typ})))


class TestHeader:
    """T8-T10: ``kid`` comes from memory only; key-carrying and ``crit`` headers refused."""

    @pytest.mark.parametrize(
        ("kid", "key"),
        [
            ("k2", SECRET.encode()),
            ("", SECRET.encode()),
            (1, SECRET.encode()),
            (["k1"], SECRET.encode()),
            ("../../dev/null", b""),
            ("' OR 1=1--", SECRET.encode()),
        ],
        ids=["unknown", "empty", "number", "list", "path", "sql"],
    )
    async def test_unknown_kid_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any], kid: Any, key: bytes
    ) -> None:
        """Signed with the real secret (or the key a path lookup would find): no fallback."""
        token = forge({**ACCESS_HEADER, "kid": kid}, claims, key=key)

        assert_unauthorized(await whoami(http, token))

    @pytest.mark.parametrize(
        "extra",
        [
            {"jwk": {"kty": "oct", "k": b64url(ATTACKER_KEY)}},
            {"jku": "https://attacker.example/jwks.json"},
            {"x5u": "https://attacker.example/cert.pem"},
        ],
        ids=["jwk", "jku", "x5u"],
    )
    async def test_header_keys_are_never_used(
        self, http: httpx.AsyncClient, claims: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        token = forge({**ACCESS_HEADER, **extra}, claims, key=ATTACKER_KEY)

        assert_unauthorized(await whoami(http, token))

    async def test_crit_header_is_refused(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        token = forge({**ACCESS_HEADER, "crit": ["x-unknown"], "x-unknown": 1}, claims)

        assert_unauthorized(await whoami(http, token))


class TestRetiredKeys:
    """T12: a retired key verifies while it is listed, and not once it is dropped."""

    OLD = "the-retired-secret-0123456789-abcdefghijklmnop"

    @pytest.fixture
    def app(self, tmp_path: Path) -> FastAPI:
        return auth_app(kernel_settings(tmp_path, key_id="k2", previous_keys={"k1": self.OLD}))

    @pytest_asyncio.fixture(loop_scope="module")
    async def shared(self, app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
        async with served(app) as shared:
            yield shared

    @pytest.fixture
    def dropped_app(self, tmp_path: Path) -> FastAPI:
        """The same service after ``k1`` was dropped from the previous keys."""
        return auth_app(kernel_settings(tmp_path / "dropped", key_id="k2"))

    async def test_token_of_a_listed_retired_key_is_accepted(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        old = forge(ACCESS_HEADER, claims, key=self.OLD.encode())

        assert (await whoami(http, old)).status_code == 200

    async def test_retired_key_cannot_sign_under_the_current_kid(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        token = forge({**ACCESS_HEADER, "kid": "k2"}, claims, key=self.OLD.encode())

        assert_unauthorized(await whoami(http, token))

    async def test_token_of_a_dropped_key_is_refused(
        self, dropped_app: FastAPI, claims: dict[str, Any]
    ) -> None:
        old = forge(ACCESS_HEADER, claims, key=self.OLD.encode())

        async with served(dropped_app) as (http, _):
            assert_unauthorized(await whoami(http, old))


class TestAuthorizationHeader:
    """T11, T14 and H9: junk credentials are a 401 problem, the query string is ignored."""

    @pytest.mark.parametrize("size", [65_536, 100 * 1024, 1024 * 1024])
    async def test_huge_token_is_refused(
        self, http: httpx.AsyncClient, pair: dict[str, Any], size: int
    ) -> None:
        header, payload, signature = pair["access_token"].split(".")
        huge = f"{header}.{payload}{'A' * size}.{signature}"

        assert_unauthorized(await whoami(http, huge))

    @pytest.mark.parametrize(
        "value",
        [
            b"Bearer",
            b"Bearer ",
            b"Bearer  ",
            b"Bearer a b",
            b"Basic xyz",
            b"Basic YWxpY2U6cGFzc3dvcmQ=",
            b"Token abc",
            b"bearer\tabc",
            b"",
            b"Bearer \xff\xfe\xc3\xa9",
            "Bearer jwt\u00e9".encode("latin-1"),
            b"Bearer eyJ\x00.eyJ.sig",
        ],
    )
    async def test_junk_authorization_is_refused(
        self, http: httpx.AsyncClient, value: bytes
    ) -> None:
        response = await http.get(WHOAMI, headers=[(b"authorization", value)])

        assert_unauthorized(response)

    async def test_two_authorization_headers_are_refused(
        self, http: httpx.AsyncClient, pair: dict[str, Any]
    ) -> None:
        good = f"Bearer {pair['access_token']}".encode()

        response = await http.get(WHOAMI, headers=[(b"authorization", good)] * 2)

        assert_unauthorized(response)

    @pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
    async def test_scheme_is_case_insensitive(
        self, http: httpx.AsyncClient, pair: dict[str, Any], scheme: str
    ) -> None:
        response = await http.get(
            WHOAMI, headers={"Authorization": f"{scheme} {pair['access_token']}"}
        )

        assert response.status_code == 200

    @pytest.mark.parametrize("name", ["access_token", "token", "authorization", "api_key"])
    async def test_token_in_the_query_string_is_ignored(
        self, http: httpx.AsyncClient, pair: dict[str, Any], name: str
    ) -> None:
        response = await http.get(WHOAMI, params={name: pair["access_token"]})

        assert_unauthorized(response, presented=False)
        optional = await http.get(OPTIONAL, params={name: pair["access_token"]})
        assert optional.json() == {"user": None}

    async def test_missing_credentials_get_a_plain_bearer_challenge(
        self, http: httpx.AsyncClient
    ) -> None:
        response = await http.get(WHOAMI)

        assert_unauthorized(response, presented=False)

    async def test_bad_token_on_an_optional_route_is_refused_not_anonymous(
        self, http: httpx.AsyncClient, claims: dict[str, Any]
    ) -> None:
        token = forge(ACCESS_HEADER, claims, key=ATTACKER_KEY)

        response = await http.get(OPTIONAL, headers=bearer(token))

        assert_unauthorized(response)

    async def test_refusals_carry_the_security_headers(self, http: httpx.AsyncClient) -> None:
        """H1 on the 401 path."""
        response = await http.get(WHOAMI, headers={"Authorization": "Bearer x.y.z"})

        assert response.headers["www-authenticate"] == INVALID
        assert all(name in response.headers for name in SECURITY_HEADERS)
        assert "server" not in response.headers


class TestStartup:
    """T13: outside debug mode the kernel refuses to start without a random-looking
    secret of 32 bytes or more."""

    @pytest.fixture(
        params=[None, "", "x" * 31, "é" * 15, "s" * 64, "ab" * 20, "changeme" * 4],
        ids=["none", "empty", "31", "30", "one-character", "two-characters", "repeated-word"],
    )
    def weak_secret_app(self, request: pytest.FixtureRequest, tmp_path: Path) -> FastAPI:
        return auth_app(kernel_settings(tmp_path, debug=False, token_secret=request.param))

    @pytest.fixture
    def strong_secret_app(self, tmp_path: Path) -> FastAPI:
        return auth_app(kernel_settings(tmp_path, debug=False, token_secret=secrets.token_hex(16)))

    async def test_missing_short_or_patterned_secret_is_refused(
        self, weak_secret_app: FastAPI
    ) -> None:
        with pytest.raises(SettingsError, match=r"auth\.token_secret \(env JWT_SECRET\)"):
            async with running(weak_secret_app):
                pass

    async def test_a_weak_retired_secret_is_refused_too(self, tmp_path: Path) -> None:
        """A retired HS256 secret still verifies tokens, so it could forge them."""
        settings = kernel_settings(
            tmp_path,
            debug=False,
            token_secret=secrets.token_urlsafe(48),
            previous_keys={"k0": "your-secret-your-secret-your-secret"},
        )
        with pytest.raises(SettingsError) as caught:
            async with running(auth_app(settings)):
                pass
        assert "auth.previous_keys['k0'] repeats itself" in str(caught.value)
        assert "your-secret" not in str(caught.value)

    async def test_a_32_byte_secret_starts(self, strong_secret_app: FastAPI) -> None:
        async with running(strong_secret_app) as kernel:
            assert kernel.is_open


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
