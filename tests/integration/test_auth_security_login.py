"""Login under attack: enumeration, broken hashes, odd usernames, brute force, spoofed IPs.

Hash work is counted by wrapping the kernel hasher's verify methods, never timed.
Checklist rows L1-L10.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from _auth_helpers import (
    AUTH,
    PASSWORD,
    WHOAMI,
    HashCalls,
    add_user,
    assert_problem,
    assert_unauthorized,
    auth_app,
    bearer,
    client,
    collector_paused,  # noqa: F401 - autouse fixture
    coordination_settings,
    kernel_settings,
    login,
    running,
)
from app_kernel.auth.passwords import PasswordHasher
from app_kernel.kernel import Kernel
from app_kernel.settings import HttpSettings


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return auth_app(kernel_settings(tmp_path))


@pytest.fixture
async def kernel(app: FastAPI) -> AsyncIterator[Kernel]:
    async with running(app) as kernel:
        yield kernel


@pytest.fixture
async def http(app: FastAPI, kernel: Kernel) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as http:
        yield http


@pytest.fixture
async def alice(kernel: Kernel) -> dict[str, Any]:
    return await add_user(kernel, "alice")


@pytest.fixture
def hashing(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> HashCalls:
    return HashCalls(kernel, monkeypatch)


async def attempt(
    http: httpx.AsyncClient, username: Any, password: Any = PASSWORD, **headers: str
) -> httpx.Response:
    return await http.post(
        f"{AUTH}/login", json={"username": username, "password": password}, headers=headers
    )


def comparable(response: httpx.Response) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """Status, body without its request id, headers without the request id."""
    body = {k: v for k, v in response.json().items() if k != "request_id"}
    headers = sorted((k, v) for k, v in response.headers.items() if k != "x-request-id")
    return response.status_code, body, headers


class TestEnumeration:
    """L1: unknown user, wrong password and deactivated user cannot be told apart."""

    @pytest.fixture
    def app(self, tmp_path: Path, sql_database_url: str) -> FastAPI:
        return auth_app(kernel_settings(tmp_path, database_url=sql_database_url))

    async def test_failures_are_identical_and_cost_one_hash_each(
        self, http: httpx.AsyncClient, kernel: Kernel, hashing: HashCalls
    ) -> None:
        await add_user(kernel, "alice")
        carol = await add_user(kernel, "carol")
        assert await kernel.auth.users.set_active(carol["id"], False)  # type: ignore[attr-defined]
        await kernel.auth.set_active(carol["id"], False)
        hashing.take()

        unknown = await attempt(http, "nobody")
        unknown_calls = hashing.take()
        wrong = await attempt(http, "alice", "not the password")
        wrong_calls = hashing.take()
        deactivated = await attempt(http, "carol")  # the right password
        deactivated_calls = hashing.take()

        assert_unauthorized(unknown, presented=False)
        assert comparable(unknown) == comparable(wrong) == comparable(deactivated)
        assert unknown_calls == ["dummy"]
        assert wrong_calls == deactivated_calls == ["verify"]
        assert (await attempt(http, "alice")).status_code == 200
        assert hashing.take() == ["verify"]


class TestStoredHash:
    """L2, L3: a broken or foreign stored hash fails like a wrong password."""

    @pytest.mark.parametrize(
        "stored",
        [
            "",
            "garbage",
            "!unusable",
            "$argon2id$v=19$m=8,t=1,p=1$bm90YXNhbHQ$bm90YWhhc2g",
            "$argon2id$v=19$m=99999999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            "$2b$12$" + "a" * 53,
            "pbkdf2_sha256$1000000$salt$aGFzaA==",
        ],
        ids=["empty", "garbage", "unusable", "bad-argon2", "huge-argon2", "bcrypt", "pbkdf2"],
    )
    async def test_unusable_stored_hash_is_a_plain_401(
        self, http: httpx.AsyncClient, kernel: Kernel, hashing: HashCalls, stored: str
    ) -> None:
        """Also with a 73+ byte password, which legacy bcrypt would choke on."""
        dave = await add_user(kernel, "dave")
        assert await kernel.auth.users.set_password_hash(dave["id"], stored)  # type: ignore[attr-defined]
        hashing.take()
        reference = await attempt(http, "nobody")
        hashing.take()

        for password in (PASSWORD, "é" * 80):
            response = await attempt(http, "dave", password)

            assert comparable(response) == comparable(reference)
            assert len(hashing.take()) == 1


class TestInputBounds:
    """L4, L9: oversized or misplaced credentials are refused before any hashing."""

    async def test_refused_with_422_without_hashing(
        self, http: httpx.AsyncClient, alice: dict[str, Any], hashing: HashCalls
    ) -> None:
        cases: list[tuple[Any, Any]] = [
            ("alice", "p" * 1_000_000),
            ("a" * 10_000, PASSWORD),
            ("", PASSWORD),
            ("alice", ""),
            ({"$ne": None}, PASSWORD),
            ("alice", ["a", "b"]),
            (None, PASSWORD),
        ]
        for username, password in cases:
            response = await attempt(http, username, password)

            body = assert_problem(response, 422)
            assert hashing.take() == []
            assert PASSWORD not in response.text
            assert "ppppp" not in response.text
            assert all("input" not in error for error in body["errors"])

    async def test_credentials_in_the_query_string_are_not_read(
        self, http: httpx.AsyncClient, alice: dict[str, Any], hashing: HashCalls
    ) -> None:
        response = await http.post(
            f"{AUTH}/login", params={"username": "alice", "password": PASSWORD}
        )

        assert_problem(response, 422)
        assert hashing.take() == []

    async def test_body_over_the_limit_is_413(
        self, http: httpx.AsyncClient, hashing: HashCalls
    ) -> None:
        response = await attempt(http, "alice", "p" * 2_000_000)

        assert_problem(response, 413)
        assert hashing.take() == []


class TestUsernames:
    """L5, L6: usernames are literal text, compared after NFKC and case folding."""

    async def test_injection_shaped_usernames_are_literal(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        await add_user(kernel, "admin", role="admin")
        usernames = ["admin' OR '1'='1", "admin'--", "admin\x00", '{"$ne":null}', "admin\u200d"]

        for username in [*usernames, "*", "%", "admin%", "adm_n"]:
            assert_unauthorized(await attempt(http, username), presented=False)

    async def test_equivalent_spellings_log_in_as_the_same_user(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        admin = await add_user(kernel, "admin")
        fullwidth = "\uff21\uff24\uff2d\uff29\uff2e"
        superscript = "\u1d2c\u1d30\u1d39\u1d35\u1d3a"

        for username in ("ADMIN", "Admin", fullwidth, " admin ", superscript):
            pair = await login(http, username)
            me = await http.get(WHOAMI, headers=bearer(pair["access_token"]))
            assert me.json()["id"] == admin["id"], username


class TestRehash:
    """L10: a hash with weaker parameters is replaced only after a successful verify."""

    async def test_hash_is_upgraded_on_successful_login_only(
        self, http: httpx.AsyncClient, kernel: Kernel
    ) -> None:
        weak = PasswordHasher(time_cost=1, memory_kib=16, parallelism=1, concurrency=1)
        old_hash = await weak.hash_async(PASSWORD)
        user = await add_user(kernel, "erin")
        users = kernel.auth.users
        await users.set_password_hash(user["id"], old_hash)  # type: ignore[attr-defined]

        assert_unauthorized(await attempt(http, "erin", "wrong password"), presented=False)
        assert (await users.get_by_id(user["id"]))["password_hash"] == old_hash  # type: ignore[index]

        await login(http, "erin")
        new_hash = (await users.get_by_id(user["id"]))["password_hash"]  # type: ignore[index]
        assert new_hash != old_hash
        assert not kernel.auth.hasher.needs_rehash(new_hash)
        await login(http, "erin")


class TestThrottle:
    """L7, L8: failed logins are counted per username and per client IP, on both backends."""

    @pytest.fixture
    def app(
        self, request: pytest.FixtureRequest, tmp_path: Path, coordination_url: str | None
    ) -> FastAPI:
        return auth_app(coordination_settings(request, tmp_path, coordination_url))

    async def test_sixth_attempt_on_one_username_is_429_even_with_the_right_password(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        await add_user(kernel, "bob")
        # Spelling variants share one counter (they are one username).
        for username in ("alice", "Alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", " alice"):
            assert_unauthorized(await attempt(http, username, "wrong password"), presented=False)

        response = await attempt(http, "alice")

        assert_problem(response, 429)
        assert 0 < int(response.headers["retry-after"]) <= 900
        assert (await attempt(http, "bob")).status_code == 200

    async def test_twenty_failures_from_one_ip_block_that_ip(
        self, app: FastAPI, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        async with client(app, "198.51.100.1") as sprayer, client(app, "198.51.100.2") as bystander:
            for n in range(20):
                assert (await attempt(sprayer, f"user{n}", "wrong password")).status_code == 401

            blocked = await attempt(sprayer, "alice")

            assert_problem(blocked, 429)
            assert int(blocked.headers["retry-after"]) > 0
            assert (await attempt(bystander, "alice")).status_code == 200

    async def test_a_success_does_not_reset_the_ip_counter(
        self, app: FastAPI, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        async with client(app, "198.51.100.3") as http:
            for n in range(10):
                assert (await attempt(http, f"user{n}", "wrong password")).status_code == 401
            await login(http, "alice")
            for n in range(10, 20):
                assert (await attempt(http, f"user{n}", "wrong password")).status_code == 401

            assert_problem(await attempt(http, "alice"), 429)

    async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
        self, http: httpx.AsyncClient, alice: dict[str, Any]
    ) -> None:
        for n in range(20):
            spoof = {"X-Forwarded-For": f"203.0.113.{n}", "X-Real-IP": f"192.0.2.{n}"}
            response = await attempt(http, f"user{n}", "wrong password", **spoof)
            assert response.status_code == 401

        response = await attempt(http, "alice", **{"X-Forwarded-For": "203.0.113.99"})

        assert_problem(response, 429)


class TestTrustedProxy:
    """L8: behind a configured proxy the forwarded client IP is the one counted."""

    @pytest.fixture
    def app(
        self, request: pytest.FixtureRequest, tmp_path: Path, coordination_url: str | None
    ) -> FastAPI:
        http = HttpSettings(trusted_proxies=("127.0.0.1",))
        return auth_app(coordination_settings(request, tmp_path, coordination_url, http=http))

    async def test_forwarded_ip_is_counted(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        for n in range(20):
            assert (await attempt(http, f"user{n}", "wrong", **attacker)).status_code == 401

        assert_problem(await attempt(http, "alice", **attacker), 429)
        assert (
            await attempt(http, "alice", **{"X-Forwarded-For": "203.0.113.8"})
        ).status_code == 200
        failures = await kernel.audit.query(action="auth.login", status="failure", limit=1)
        assert failures[0].ip_address == "203.0.113.7"

    async def test_an_ipv6_client_is_counted_by_its_64(
        self, http: httpx.AsyncClient, kernel: Kernel, alice: dict[str, Any]
    ) -> None:
        """One IPv6 host can use any address of its /64: a new address per attempt
        must not give it a new counter."""
        for n in range(20):
            hop = {"X-Forwarded-For": f"2001:db8:1:2::{n + 1:x}"}
            assert (await attempt(http, f"user{n}", "wrong", **hop)).status_code == 401

        assert_problem(await attempt(http, "alice", **{"X-Forwarded-For": "2001:db8:1:2::ff"}), 429)
        neighbour = {"X-Forwarded-For": "2001:db8:1:3::1"}
        assert (await attempt(http, "alice", **neighbour)).status_code == 200
        failures = await kernel.audit.query(action="auth.login", status="failure", limit=1)
        assert failures[0].ip_address == "2001:db8:1:2::14"  # the audit keeps the address
