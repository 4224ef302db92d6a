"""OidcVerifier against a real JWKS endpoint served over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import collections
import gzip
import hashlib
import hmac
import json
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from app_kernel.auth.external import InvalidExternalToken, OidcVerifier
from app_kernel.errors import KernelError, SettingsError
from app_kernel.settings import AuthSettings

ISSUER = "https://idp.example.com/realms/app"
AUDIENCE = "app-api"
ALGORITHMS = ("RS256", "ES256", "EdDSA")
_DROP = object()


# --- the JWKS server ---------------------------------------------------------------------


class _ServerState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset(b'{"keys": []}')

    def reset(self, jwks: bytes) -> None:
        with self.lock:
            self.jwks = jwks
            self.status = 200
            self.delay = 0.0
            self.requests: collections.Counter[str] = collections.Counter()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests[self.path] += 1
            jwks, status, delay = state.jwks, state.status, state.delay
        if self.path == "/jwks":
            time.sleep(delay)
            self._send(status, jwks)
        elif self.path == "/redirect":
            self._send(302, b"", Location="/jwks")
        elif self.path == "/big":
            self._send(200, jwks.ljust(5000))
        elif self.path == "/big-no-length":
            self.send_response(200)  # HTTP/1.0 without Content-Length: body ends at close
            self.end_headers()
            self.wfile.write(jwks.ljust(5000))
        elif self.path == "/gzip":
            self._send(200, gzip.compress(jwks), Content_Encoding="gzip")
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(200, jwks)
        elif self.path == "/not-json":
            self._send(200, b"<html>hello</html>")
        elif self.path == "/wrong-shape":
            self._send(200, b'{"keys": "rsa-1"}')
        else:
            self._send(404, b"{}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _ServerState


@dataclass
class JwksServer:
    state: _ServerState
    base_url: str

    def url(self, path: str = "/jwks") -> str:
        return f"{self.base_url}{path}"

    def serve(self, *jwks: dict[str, Any]) -> None:
        """Replace the key set (the counters are kept)."""
        with self.state.lock:
            self.state.jwks = json.dumps({"keys": list(jwks)}).encode()

    def count(self, path: str = "/jwks") -> int:
        with self.state.lock:
            return self.state.requests[path]


@pytest.fixture(scope="module")
def _http_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = _ServerState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --- keys and tokens ---------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    kid: str
    alg: str
    private: Any

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        codec: Any = {"RS": RSAAlgorithm, "ES": ECAlgorithm, "Ed": OKPAlgorithm}[self.alg[:2]]
        data: dict[str, Any] = codec.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", **extra}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@dataclass(frozen=True)
class Keys:
    rsa1: Key
    rsa2: Key
    ec: Key
    ed: Key
    attacker: Key


@pytest.fixture(scope="module")
def keys() -> Keys:
    def rsa_key(size: int = 2048) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=size)

    return Keys(
        rsa1=Key("rsa-1", "RS256", rsa_key()),
        rsa2=Key("rsa-2", "RS256", rsa_key()),
        ec=Key("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        ed=Key("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
        attacker=Key("rsa-1", "RS256", rsa_key()),  # claims the real key's kid
    )


def make_token(
    key: Key, *, headers: dict[str, Any] | None = None, kid: Any = None, **claims: Any
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "email": "ada@example.com",
        "preferred_username": "ada",
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not _DROP}
    header = {"kid": key.kid if kid is None else kid, **(headers or {})}
    header = {k: v for k, v in header.items() if v is not _DROP}
    # PyJWS signs the claims as given; jwt.encode would refuse some bad ones (iss list).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the weak-key test
        return jwt.PyJWS().encode(
            json.dumps(payload).encode(), key.private, algorithm=key.alg, headers=header
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_b64(signature)}"


def valid_claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300}


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def server(_http_server: _Server, keys: Keys) -> JwksServer:
    """The JWKS server, reset to serve the RSA, EC and Ed25519 keys."""
    _http_server.state.reset(b"")
    host, port = _http_server.server_address[:2]
    jwks = JwksServer(_http_server.state, f"http://{host!s}:{port}")
    jwks.serve(keys.rsa1.jwk(alg="RS256"), keys.ec.jwk(), keys.ed.jwk())
    return jwks


@pytest.fixture
async def verifier(server: JwksServer) -> AsyncIterator[OidcVerifier]:
    v = OidcVerifier(issuer=ISSUER, jwks_url=server.url(), audience=AUDIENCE, algorithms=ALGORITHMS)
    yield v
    await v.aclose()


async def _refused(verifier: OidcVerifier, token: str) -> None:
    with pytest.raises(InvalidExternalToken):
        await verifier.verify(token)


# --- accepted tokens ---------------------------------------------------------------------


async def test_valid_token_gives_an_identity(verifier: OidcVerifier, keys: Keys) -> None:
    identity = await verifier.verify(make_token(keys.rsa1))

    assert identity.id == "user-1"
    assert identity.email == "ada@example.com"
    assert identity.username == "ada"
    assert identity.role == "user"
    assert identity.auth_method == "external"


@pytest.mark.parametrize("which", ["ec", "ed"])
async def test_ec_and_ed25519_tokens_are_accepted(
    verifier: OidcVerifier, keys: Keys, which: str
) -> None:
    identity = await verifier.verify(make_token(getattr(keys, which), sub="user-2"))
    assert identity.id == "user-2"


async def test_exp_within_leeway_is_accepted(verifier: OidcVerifier, keys: Keys) -> None:
    now = int(time.time())
    identity = await verifier.verify(make_token(keys.rsa1, iat=now - 60, exp=now - 5))
    assert identity.id == "user-1"


async def test_optional_claims_of_the_wrong_type_are_ignored(
    verifier: OidcVerifier, keys: Keys
) -> None:
    identity = await verifier.verify(make_token(keys.rsa1, email=["x"], preferred_username=_DROP))
    assert (identity.email, identity.username) == ("", "")


@pytest.mark.parametrize(
    ("role_claim", "claims", "expected"),
    [
        ("role", {"role": "admin"}, "admin"),
        ("role", {"role": "editor"}, "editor"),
        ("role", {"role": ["viewer", "admin"]}, "admin"),
        ("role", {"role": ["viewer", "editor"]}, "user"),
        ("role", {"role": [1, None]}, "user"),
        ("role", {}, "user"),
        ("roles", {"roles": ["admin"]}, "admin"),
        ("realm_access.roles", {"realm_access": {"roles": ["offline", "admin"]}}, "admin"),
        ("realm_access.roles", {"realm_access": {"roles": ["offline"]}}, "user"),
        ("realm_access.roles", {"realm_access": "admin-ish"}, "user"),
        ("https://example.com/roles", {"https://example.com/roles": ["admin"]}, "admin"),
    ],
)
async def test_role_mapping(
    server: JwksServer, keys: Keys, role_claim: str, claims: dict[str, Any], expected: str
) -> None:
    verifier = OidcVerifier(
        issuer=ISSUER,
        jwks_url=server.url(),
        audience=AUDIENCE,
        algorithms=ALGORITHMS,
        role_claim=role_claim,
    )
    try:
        identity = await verifier.verify(make_token(keys.rsa1, **claims))
    finally:
        await verifier.aclose()
    assert identity.role == expected
    assert identity.is_admin is (expected == "admin")


async def test_audience_list_containing_ours_is_accepted(
    verifier: OidcVerifier, keys: Keys
) -> None:
    identity = await verifier.verify(make_token(keys.rsa1, aud=["other", AUDIENCE]))
    assert identity.id == "user-1"


# --- refused claims ----------------------------------------------------------------------


class _Ago:
    """A time ``seconds`` before the moment the test runs (negative: after it)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def at(self, now: float) -> int:
        return int(now) - self.seconds


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"iss": "https://evil.example.com/realms/app"}, id="wrong-iss"),
        pytest.param({"iss": "https://idp.example.com/realms/ap"}, id="iss-prefix"),
        pytest.param({"iss": ISSUER + "x"}, id="iss-extended"),
        pytest.param({"iss": ISSUER + "/"}, id="iss-trailing-slash"),
        pytest.param({"iss": [ISSUER]}, id="iss-list"),
        pytest.param({"aud": "other-api"}, id="wrong-aud"),
        pytest.param({"aud": AUDIENCE + "-2"}, id="aud-extended"),
        pytest.param({"exp": _Ago(60)}, id="expired"),
        pytest.param({"nbf": _Ago(-120)}, id="not-yet-valid"),
        pytest.param({"iat": _Ago(-120)}, id="issued-in-future"),
        pytest.param({"exp": _DROP}, id="no-exp"),
        pytest.param({"iat": _DROP}, id="no-iat"),
        pytest.param({"sub": _DROP}, id="no-sub"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": 42}, id="sub-not-string"),
        pytest.param({"aud": _DROP}, id="no-aud"),
        pytest.param({"iss": _DROP}, id="no-iss"),
    ],
)
async def test_bad_claims_are_refused(
    verifier: OidcVerifier, keys: Keys, claims: dict[str, Any]
) -> None:
    # Times are taken now, not at collection: a long suite would age them past the test.
    claims = {k: v.at(time.time()) if isinstance(v, _Ago) else v for k, v in claims.items()}
    await _refused(verifier, make_token(keys.rsa1, **claims))


# --- refused headers and signatures ------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_is_refused(verifier: OidcVerifier, server: JwksServer, alg: str) -> None:
    await _refused(verifier, forge({"alg": alg, "kid": "rsa-1"}, valid_claims()))
    assert server.count() == 0  # refused before any key is fetched


async def test_hs256_signed_with_the_public_key_pem_is_refused(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    """Algorithm confusion: the RSA public key used as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    unsigned = forge(header, valid_claims()).rsplit(".", 1)[0]
    mac = hmac.new(keys.rsa1.public_pem(), unsigned.encode(), hashlib.sha256).digest()
    await _refused(verifier, f"{unsigned}.{_b64(mac)}")
    assert server.count() == 0


async def test_allowed_alg_that_does_not_match_the_key_is_refused(
    server: JwksServer, keys: Keys
) -> None:
    """The JWK declares RS256; a PS256 signature by the same key is not accepted."""
    verifier = OidcVerifier(
        issuer=ISSUER, jwks_url=server.url(), audience=AUDIENCE, algorithms=("RS256", "PS256")
    )
    try:
        ps256 = Key("rsa-1", "PS256", keys.rsa1.private)
        await _refused(verifier, make_token(ps256))
        assert (await verifier.verify(make_token(keys.rsa1))).id == "user-1"
    finally:
        await verifier.aclose()


async def test_alg_outside_the_allowlist_is_refused(verifier: OidcVerifier, keys: Keys) -> None:
    await _refused(verifier, make_token(Key("rsa-1", "RS512", keys.rsa1.private)))


async def test_tampered_payload_is_refused(verifier: OidcVerifier, keys: Keys) -> None:
    head, _, signature = make_token(keys.rsa1).split(".")
    claims = {**valid_claims(), "role": "admin"}
    await _refused(verifier, f"{head}.{_b64(json.dumps(claims).encode())}.{signature}")


async def test_key_from_token_headers_is_never_used(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    """jwk/jku/x5u/x5c point at the attacker's key; only the fetched set counts."""
    attacker_jwk = keys.attacker.jwk()
    headers = {
        "jwk": attacker_jwk,
        "jku": server.url("/attacker-jwks"),
        "x5u": server.url("/attacker-cert"),
        "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
    }
    await _refused(verifier, make_token(keys.attacker, headers=headers))  # kid of a real key
    await _refused(verifier, make_token(keys.attacker, headers=headers, kid=_DROP))  # no kid
    await _refused(verifier, make_token(keys.attacker, headers=headers, kid="attacker"))
    assert server.count("/attacker-jwks") == 0
    assert server.count("/attacker-cert") == 0


async def test_crit_header_is_refused(verifier: OidcVerifier, keys: Keys) -> None:
    token = make_token(keys.rsa1, headers={"crit": ["x-unknown"], "x-unknown": True})
    await _refused(verifier, token)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="one-segment"),
        pytest.param("a.b", id="two-segments"),
        pytest.param("a.b.c.d", id="four-segments"),
        pytest.param("!!!.e30.", id="header-not-base64"),
        pytest.param(_b64(b"not json") + ".e30.", id="header-not-json"),
        pytest.param(_b64(b'["RS256"]') + ".e30.", id="header-array"),
        pytest.param(_b64(b'{"alg":"RS256","alg":"none","kid":"rsa-1"}') + ".e30.", id="dup"),
        pytest.param(_b64(b'{"alg":"RS256","kid":7}') + ".e30.", id="kid-not-string"),
        pytest.param(_b64(b'{"alg":"RS256","kid":"../../dev/null"}') + ".e30.", id="kid-path"),
        pytest.param("é.e30.", id="non-ascii"),
    ],
)
async def test_malformed_tokens_are_refused(verifier: OidcVerifier, token: str) -> None:
    await _refused(verifier, token)


async def test_oversized_token_is_refused_before_anything_else(
    server: JwksServer, keys: Keys
) -> None:
    verifier = OidcVerifier(
        issuer=ISSUER,
        jwks_url=server.url(),
        audience=AUDIENCE,
        algorithms=ALGORITHMS,
        max_token_bytes=4096,
    )
    try:
        await _refused(verifier, make_token(keys.rsa1, padding="x" * 5000))
        await _refused(verifier, "a" * 1_000_000)
        assert server.count() == 0
    finally:
        await verifier.aclose()


async def test_weak_rsa_key_in_the_jwks_is_refused(server: JwksServer) -> None:
    weak = Key("weak", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505
    server.serve(weak.jwk())
    verifier = OidcVerifier(
        issuer=ISSUER, jwks_url=server.url(), audience=AUDIENCE, algorithms=ALGORITHMS
    )
    try:
        await _refused(verifier, make_token(weak))
    finally:
        await verifier.aclose()


async def test_symmetric_and_encryption_keys_in_the_jwks_are_skipped(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    server.serve(
        {"kty": "oct", "kid": "shared", "k": _b64(b"s" * 32), "alg": "HS256"},
        keys.rsa2.jwk(use="enc"),
        keys.rsa1.jwk(),
    )
    secret_token = jwt.encode(
        valid_claims(), b"s" * 32, algorithm="HS256", headers={"kid": "shared"}
    )
    await _refused(verifier, secret_token)
    await _refused(verifier, make_token(keys.rsa2))  # its only JWK is for encryption
    assert (await verifier.verify(make_token(keys.rsa1))).id == "user-1"


# --- key fetching and rotation -----------------------------------------------------------


async def test_unknown_kid_refetches_once_then_refuses(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    await verifier.verify(make_token(keys.rsa1))
    assert server.count() == 1

    await _refused(verifier, make_token(keys.attacker, kid="unknown-1"))
    assert server.count() == 2
    for n in range(10):  # kid spraying: no further fetches within the refetch interval
        await _refused(verifier, make_token(keys.attacker, kid=f"unknown-{n + 2}"))
    assert server.count() == 2
    await verifier.verify(make_token(keys.rsa1))
    assert server.count() == 2


async def test_jwks_rotation(server: JwksServer, keys: Keys) -> None:
    """New kid: one refetch and accepted; old kid: accepted during overlap, refused after."""
    server.serve(keys.rsa1.jwk())
    verifier = OidcVerifier(
        issuer=ISSUER,
        jwks_url=server.url(),
        audience=AUDIENCE,
        algorithms=ALGORITHMS,
        cache_seconds=0.3,
    )
    try:
        old_token, new_token = make_token(keys.rsa1), make_token(keys.rsa2)
        await verifier.verify(old_token)
        assert server.count() == 1

        server.serve(keys.rsa1.jwk(), keys.rsa2.jwk())  # the IdP publishes its next key
        assert (await verifier.verify(new_token)).id == "user-1"
        assert server.count() == 2  # the unknown kid caused exactly one refetch
        await verifier.verify(old_token)  # overlap: both keys valid
        assert server.count() == 2

        server.serve(keys.rsa2.jwk())  # the old key is retired
        await verifier.verify(old_token)  # still cached, at most cache_seconds
        await asyncio.sleep(0.35)
        await _refused(verifier, old_token)
        assert server.count() == 3  # the expired cache was refetched once
        await verifier.verify(new_token)
        assert server.count() == 3
    finally:
        await verifier.aclose()


async def test_new_kid_after_retirement_is_refused_without_refetch(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    await verifier.verify(make_token(keys.rsa1))
    server.serve(keys.rsa2.jwk())
    await verifier.verify(make_token(keys.rsa2))  # rotation: one refetch
    assert server.count() == 2
    await _refused(verifier, make_token(keys.rsa1))  # old kid gone; refetch is rate-limited
    assert server.count() == 2


async def test_concurrent_verifies_share_one_fetch(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    server.state.delay = 0.2
    tokens = [make_token(k, sub=f"user-{i}") for i, k in enumerate([keys.rsa1, keys.ec] * 10)]

    identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))

    assert [i.id for i in identities] == [f"user-{i}" for i in range(20)]
    assert server.count() == 1


async def test_concurrent_unknown_kids_share_one_refetch(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    await verifier.verify(make_token(keys.rsa1))
    server.serve(keys.rsa2.jwk())
    server.state.delay = 0.2
    tokens = [make_token(keys.rsa2, sub=f"user-{i}") for i in range(10)]

    identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))

    assert len(identities) == 10
    assert server.count() == 2


# --- hostile or broken JWKS endpoints ----------------------------------------------------


async def _verifier_for(server: JwksServer, path: str, **options: Any) -> OidcVerifier:
    return OidcVerifier(
        issuer=ISSUER,
        jwks_url=server.url(path),
        audience=AUDIENCE,
        algorithms=ALGORITHMS,
        **options,
    )


async def test_redirect_from_the_jwks_url_is_not_followed(server: JwksServer, keys: Keys) -> None:
    verifier = await _verifier_for(server, "/redirect")
    try:
        await _refused(verifier, make_token(keys.rsa1))
    finally:
        await verifier.aclose()
    assert server.count("/redirect") == 1
    assert server.count("/jwks") == 0


@pytest.mark.parametrize("path", ["/big", "/big-no-length"])
async def test_oversized_jwks_is_refused(server: JwksServer, keys: Keys, path: str) -> None:
    verifier = await _verifier_for(server, path, max_jwks_bytes=2000)
    roomy = await _verifier_for(server, path)
    try:
        await _refused(verifier, make_token(keys.rsa1))
        assert (await roomy.verify(make_token(keys.rsa1))).id == "user-1"  # same body fits
    finally:
        await verifier.aclose()
        await roomy.aclose()


@pytest.mark.parametrize("path", ["/gzip", "/not-json", "/wrong-shape", "/missing"])
async def test_unusable_jwks_answers_are_refused(server: JwksServer, keys: Keys, path: str) -> None:
    verifier = await _verifier_for(server, path)
    try:
        with pytest.raises(InvalidExternalToken, match="could not be fetched"):
            await verifier.verify(make_token(keys.rsa1))
    finally:
        await verifier.aclose()


async def test_slow_jwks_endpoint_times_out(server: JwksServer, keys: Keys) -> None:
    verifier = await _verifier_for(server, "/slow", http_timeout_seconds=0.2)
    started = time.monotonic()
    try:
        await _refused(verifier, make_token(keys.rsa1))
    finally:
        await verifier.aclose()
    assert time.monotonic() - started < 0.8


async def test_failed_fetch_is_not_retried_at_once(
    verifier: OidcVerifier, server: JwksServer, keys: Keys
) -> None:
    server.state.status = 500
    await _refused(verifier, make_token(keys.rsa1))
    await _refused(verifier, make_token(keys.rsa1))
    assert server.count() == 1


# --- construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"algorithms": ("HS256",)}, "algorithms"),
        ({"algorithms": ("RS256", "none")}, "algorithms"),
        ({"algorithms": ()}, "algorithms"),
        ({"jwks_url": "http://idp.example.com/jwks"}, "jwks_url"),
        ({"jwks_url": "ftp://127.0.0.1/jwks"}, "jwks_url"),
        ({"jwks_url": "/jwks"}, "jwks_url"),
        ({"issuer": ""}, "issuer"),
        ({"audience": ""}, "audience"),
    ],
)
def test_unsafe_configuration_is_refused(options: dict[str, Any], fragment: str) -> None:
    arguments: dict[str, Any] = {
        "issuer": ISSUER,
        "jwks_url": "https://idp.example.com/jwks",
        "audience": AUDIENCE,
        "algorithms": ALGORITHMS,
        **options,
    }
    with pytest.raises(SettingsError, match=fragment):
        OidcVerifier(**arguments)


def test_from_settings_names_the_missing_fields() -> None:
    with pytest.raises(SettingsError) as caught:
        OidcVerifier.from_settings(AuthSettings(oidc_audience=AUDIENCE))
    message = str(caught.value)
    assert "auth.oidc_issuer" in message
    assert "auth.oidc_jwks_url" in message
    assert "auth.oidc_audience" not in message


async def test_from_settings_builds_a_working_verifier(server: JwksServer, keys: Keys) -> None:
    settings = AuthSettings(
        oidc_issuer=ISSUER,
        oidc_jwks_url=server.url(),
        oidc_audience=AUDIENCE,
        oidc_role_claim="realm_access.roles",
    )
    verifier = OidcVerifier.from_settings(settings)
    try:
        identity = await verifier.verify(
            make_token(keys.ec, realm_access={"roles": ["admin"]}, sub="svc")
        )
    finally:
        await verifier.aclose()
    assert (identity.id, identity.role) == ("svc", "admin")


def test_invalid_external_token_is_a_kernel_error() -> None:
    assert issubclass(InvalidExternalToken, KernelError)
