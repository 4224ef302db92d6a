"""Password hashing and the password policy.

Every hasher here uses cheap Argon2 parameters (t=1, m=8 KiB) except the test
that pins the production defaults. Async tests hash only through the async
(threaded) methods, so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable

import pytest

from app_kernel.auth import passwords
from app_kernel.auth.passwords import (
    PasswordHasher,
    PasswordPolicyError,
    check_password_policy,
    enforce_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from app_kernel.errors import KernelError
from app_kernel.settings import AuthSettings

PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")


def cheap(concurrency: int = 4, *, time_cost: int = 1, memory_kib: int = 8) -> PasswordHasher:
    return PasswordHasher(
        time_cost=time_cost, memory_kib=memory_kib, parallelism=1, concurrency=concurrency
    )


def params(hashed: str) -> tuple[int, int, int]:
    """``(m, t, p)`` of an encoded argon2id hash."""
    match = PARAMS.match(hashed)
    assert match is not None, hashed
    m, t, p = (int(g) for g in match.groups())
    return m, t, p


@pytest.fixture
def hasher() -> PasswordHasher:
    return cheap()


class TestHashing:
    """Round trips, refusals that never raise, and rehash detection."""

    def test_round_trip(self, hasher: PasswordHasher) -> None:
        hashed = hasher.hash("correct horse battery staple")
        assert hashed.startswith("$argon2id$")
        assert hasher.verify("correct horse battery staple", hashed)

    def test_salted(self, hasher: PasswordHasher) -> None:
        assert hasher.hash("same") != hasher.hash("same")

    @pytest.mark.parametrize(
        "wrong", ["correct horse battery stapl", "Correct horse battery staple", "", " "]
    )
    def test_wrong_password(self, hasher: PasswordHasher, wrong: str) -> None:
        assert hasher.verify(wrong, hasher.hash("correct horse battery staple")) is False

    def test_unicode_password(self, hasher: PasswordHasher) -> None:
        hashed = hasher.hash("pässwörd-密码-🔑")
        assert hasher.verify("pässwörd-密码-🔑", hashed)
        assert not hasher.verify("passwort-密码-🔑", hashed)

    @pytest.mark.parametrize(
        "stored",
        [
            "",
            "!",  # Django's unusable password marker
            "!unusable",
            "garbage",
            "$argon2id$",
            "$argon2id$v=19$m=8,t=1,p=1$bm90YXNhbHQ$",
            "$argon2id$v=19$m=8,t=1,p=1$!!!!$!!!!",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA$extra",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$ü",
            "$2b$12$abcdefghijklmnopqrstuuJ7Q0G8f7E0yq7uW8h1nBqlKzK9Q2mO6",  # bcrypt
            "pbkdf2_sha256$1000000$salt$hash",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$" + "A" * 10_000,
        ],
    )
    def test_unusable_hash_is_false_not_an_error(self, hasher: PasswordHasher, stored: str) -> None:
        assert hasher.verify("password", stored) is False
        assert verify_password("password", stored) is False

    @pytest.mark.parametrize(
        ("password", "stored"),
        [(None, "x"), (b"password", "x"), ("password", None), ("password", b"$argon2id$"), (1, 2)],
    )
    def test_non_string_input_is_false(
        self, hasher: PasswordHasher, password: object, stored: object
    ) -> None:
        assert hasher.verify(password, stored) is False  # type: ignore[arg-type]
        assert verify_password(password, stored) is False  # type: ignore[arg-type]

    def test_lone_surrogate_password_is_false(self, hasher: PasswordHasher) -> None:
        assert hasher.verify("\ud800", hasher.hash("password")) is False

    def test_hash_refuses_non_strings(self, hasher: PasswordHasher) -> None:
        with pytest.raises(TypeError, match="str"):
            hasher.hash(b"password")  # type: ignore[arg-type]

    def test_unusable_hash_costs_one_hash(
        self, hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An account without a usable hash answers in the usual time (CVE-2024-39329)."""
        inner = hasher._argon2
        calls: list[object] = []

        class Counting:
            def __getattr__(self, name: str) -> object:
                return getattr(inner, name)

            def verify(self, hashed: str | bytes, password: str | bytes) -> bool:
                calls.append(hashed)
                return inner.verify(hashed, password)

        monkeypatch.setattr(hasher, "_argon2", Counting())
        for stored in ("", "!", "garbage", "$argon2id$v=19$m=8,t=1,p=1$!!!!$!!!!"):
            calls.clear()
            assert hasher.verify("password", stored) is False
            assert hasher.dummy_hash in calls, stored
        calls.clear()
        assert hasher.verify("password", hasher.hash("other")) is False
        assert len(calls) == 1  # a real mismatch costs exactly one verify too

    def test_needs_rehash(self, hasher: PasswordHasher) -> None:
        assert hasher.needs_rehash(hasher.hash("pw")) is False
        weaker = cheap(time_cost=1, memory_kib=8).hash("pw")
        stronger = cheap(time_cost=2, memory_kib=16)
        assert stronger.needs_rehash(weaker) is True
        assert stronger.verify("pw", weaker)  # old hashes still verify until upgraded

    @pytest.mark.parametrize("stored", ["", "garbage", "$2b$12$abc", None])
    def test_needs_rehash_on_unparseable_hash(self, hasher: PasswordHasher, stored: object) -> None:
        assert hasher.needs_rehash(stored) is True  # type: ignore[arg-type]

    def test_dummy_hash_uses_the_live_parameters(self) -> None:
        for time_cost, memory_kib in ((1, 8), (2, 16), (3, 32)):
            hasher = cheap(time_cost=time_cost, memory_kib=memory_kib)
            assert params(hasher.dummy_hash) == (memory_kib, time_cost, 1)
            assert hasher.needs_rehash(hasher.dummy_hash) is False
        assert cheap().dummy_hash != cheap().dummy_hash

    def test_from_settings(self) -> None:
        auth = AuthSettings(
            argon2_time_cost=1, argon2_memory_kib=16, argon2_parallelism=2, hash_concurrency=3
        )
        hasher = PasswordHasher.from_settings(auth)
        assert (hasher.time_cost, hasher.memory_kib, hasher.parallelism) == (1, 16, 2)
        assert hasher.concurrency == 3
        assert params(hasher.hash("pw")) == (16, 1, 2)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"time_cost": 0, "memory_kib": 8, "parallelism": 1, "concurrency": 1},
            {"time_cost": 1, "memory_kib": 8, "parallelism": 0, "concurrency": 1},
            {"time_cost": 1, "memory_kib": 8, "parallelism": 1, "concurrency": 0},
            {"time_cost": 1, "memory_kib": 15, "parallelism": 2, "concurrency": 1},
        ],
    )
    def test_bad_parameters(self, kwargs: dict[str, int]) -> None:
        with pytest.raises(ValueError, match="must be at least"):
            PasswordHasher(**kwargs)


class TestDefaults:
    """The plain functions and the production parameters."""

    def test_production_parameters_are_pinned(self) -> None:
        """OWASP: argon2id, 19 MiB, 2 iterations, 1 lane. The only costly hash here."""
        hashed = hash_password("correct horse battery staple")
        assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert params(hashed) == (19456, 2, 1)
        assert verify_password("correct horse battery staple", hashed)
        assert not verify_password("wrong horse battery staple", hashed)
        assert needs_rehash(hashed) is False
        assert needs_rehash(cheap().hash("x")) is True
        default = passwords.default_hasher()
        assert default is passwords.default_hasher()
        assert params(default.dummy_hash) == (19456, 2, 1)
        assert (passwords.OWASP_TIME_COST, passwords.OWASP_MEMORY_KIB) == (2, 19456)
        assert passwords.OWASP_PARALLELISM == 1

    def test_defaults_match_the_settings_defaults(self) -> None:
        auth = AuthSettings()
        assert auth.argon2_time_cost == passwords.OWASP_TIME_COST
        assert auth.argon2_memory_kib == passwords.OWASP_MEMORY_KIB
        assert auth.argon2_parallelism == passwords.OWASP_PARALLELISM


class TestAsync:
    """Hashing off the loop, bounded by the semaphore."""

    async def test_construction_hashes_nothing_and_warm_hashes_off_the_loop(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Building a kernel on a running loop must not block it with the dummy hash."""
        threads: list[int] = []
        real = passwords.argon2.PasswordHasher.hash

        def recording(self: object, password: str | bytes, **kwargs: object) -> str:
            threads.append(threading.get_ident())
            return real(self, password, **kwargs)

        monkeypatch.setattr(passwords.argon2.PasswordHasher, "hash", recording)
        hasher = cheap()
        assert threads == []
        await hasher.warm()
        await hasher.warm()  # made once
        assert len(threads) == 1
        assert threads[0] != threading.get_ident()
        assert params(hasher.dummy_hash) == (8, 1, 1)
        assert len(threads) == 1

    async def test_async_round_trip(self, hasher: PasswordHasher) -> None:
        hashed = await hasher.hash_async("pw-async")
        assert await hasher.verify_async("pw-async", hashed)
        assert not await hasher.verify_async("other", hashed)
        assert not await hasher.verify_async("pw-async", "garbage")

    async def test_verify_dummy_runs_one_verify_and_is_false(
        self, hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[tuple[str, str]] = []
        real = hasher.verify

        def spy(password: str, hashed: str) -> bool:
            seen.append((password, hashed))
            return real(password, hashed)

        monkeypatch.setattr(hasher, "verify", spy)
        assert await hasher.verify_dummy_async("anything") is False
        assert seen == [("anything", hasher.dummy_hash)]

    async def test_the_loop_is_not_blocked(
        self, hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A slow hash runs in a thread: the loop keeps ticking meanwhile."""
        real = hasher.hash

        def slow_hash(password: str) -> str:
            time.sleep(0.05)
            return real(password)

        monkeypatch.setattr(hasher, "hash", slow_hash)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        try:
            await hasher.hash_async("pw")
        finally:
            task.cancel()
        assert ticks >= 3

    @staticmethod
    def _instrument(hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
        """Wrap ``hasher.hash`` to record how many calls run at once."""
        state: dict[str, object] = {"now": 0, "peak": 0, "calls": 0}
        lock = threading.Lock()
        real: Callable[[str], str] = hasher.hash

        def slow_hash(password: str) -> str:
            with lock:
                state["now"] = int(state["now"]) + 1  # type: ignore[call-overload]
                state["peak"] = max(int(state["peak"]), int(state["now"]))  # type: ignore[call-overload]
                state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
            try:
                time.sleep(0.03)
                return real(password)
            finally:
                with lock:
                    state["now"] = int(state["now"]) - 1  # type: ignore[call-overload]

        monkeypatch.setattr(hasher, "hash", slow_hash)
        return state

    @pytest.mark.parametrize("concurrency", [1, 2, 3])
    async def test_concurrency_is_bounded(
        self, monkeypatch: pytest.MonkeyPatch, concurrency: int
    ) -> None:
        hasher = cheap(concurrency)
        state = self._instrument(hasher, monkeypatch)
        results = await asyncio.gather(*(hasher.hash_async(f"pw{i}") for i in range(12)))
        assert len(set(results)) == 12
        assert state["calls"] == 12
        assert state["peak"] == concurrency

    async def test_cancelled_caller_keeps_its_slot_until_the_thread_ends(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Cancelling a login does not free memory the thread still uses."""
        hasher = cheap(1)
        release = threading.Event()
        entered: list[str] = []
        real = hasher.hash

        started = threading.Event()

        def gated_hash(password: str) -> str:
            entered.append(password)
            started.set()
            if password == "first":
                release.wait(5)
            return real(password)

        monkeypatch.setattr(hasher, "hash", gated_hash)
        first = asyncio.create_task(hasher.hash_async("first"))
        assert await asyncio.to_thread(started.wait, 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(hasher.hash_async("second"))
        await asyncio.sleep(0.05)
        assert entered == ["first"], "a second hash started while the first still ran"
        release.set()
        assert (await second).startswith("$argon2id$")
        assert entered == ["first", "second"]

    async def test_one_hasher_serves_several_loops(self, hasher: PasswordHasher) -> None:
        """The semaphore is per loop, so a hasher built at import works in any loop."""
        hashed = await hasher.hash_async("pw")

        def other_loop() -> bool:
            return asyncio.run(hasher.verify_async("pw", hashed))

        assert await asyncio.to_thread(other_loop)


class TestPolicy:
    """Length window and common passwords; no composition rules (ASVS 6.2)."""

    @pytest.mark.parametrize(
        ("password", "ok"),
        [
            ("a" * 7, False),
            ("k3#Lp9!", False),  # 7 characters however complex
            ("tqbfjotl", True),  # 8 characters, no digit, no symbol
            ("x" * 64, True),
            ("correct horse battery staple " * 2, True),
            ("x" * 256, True),
            ("x" * 257, False),
            ("nodigitsatallhere", True),
            ("ünïcødé-pässwørd", True),
        ],
    )
    def test_lengths(self, password: str, ok: bool) -> None:
        assert (check_password_policy(password) == []) is ok

    def test_length_counts_characters_not_bytes(self) -> None:
        assert check_password_policy("密" * 8) == []
        assert check_password_policy("🔑" * 7) != []

    def test_messages(self) -> None:
        assert check_password_policy("short") == ["Password must be at least 8 characters."]
        assert check_password_policy("x" * 300) == ["Password must be at most 256 characters."]

    @pytest.mark.parametrize(
        "common",
        [
            "password123",
            "Password",
            "PASSWORD",
            "password",
            "qwerty123",
            "iloveyou",
            "P@ssw0rd",
            "12345678",
            "Football",
            "trustno1",
        ],
    )
    def test_common_passwords(self, common: str) -> None:
        problems = check_password_policy(common, min_length=8)
        assert any("common" in p for p in problems)

    def test_common_list_is_sizeable(self) -> None:
        assert len(passwords._COMMON_PASSWORDS) >= 200
        assert all(p == p.casefold() for p in passwords._COMMON_PASSWORDS)

    def test_too_long_is_answered_before_other_work(self, monkeypatch: pytest.MonkeyPatch) -> None:
        class Spy(frozenset[str]):
            def __contains__(self, item: object) -> bool:
                raise AssertionError("common-password lookup on an over-long password")

        monkeypatch.setattr(passwords, "_COMMON_PASSWORDS", Spy())
        assert check_password_policy("x" * 1_000_000) == [
            "Password must be at most 256 characters."
        ]

    def test_custom_window(self) -> None:
        assert check_password_policy("abcdefghij", min_length=12) != []
        assert check_password_policy("x" * 20, max_length=64) == []
        assert check_password_policy("x" * 65, max_length=64) != []
        with pytest.raises(ValueError, match="min_length"):
            check_password_policy("x", min_length=10, max_length=9)

    def test_several_problems_at_once(self) -> None:
        assert len(check_password_policy("letmein", min_length=8)) == 2

    def test_invalid_characters(self) -> None:
        assert check_password_policy("abcdefgh\ud800") == ["Password contains invalid characters."]

    def test_enforce(self) -> None:
        enforce_password_policy("a perfectly fine passphrase")
        with pytest.raises(PasswordPolicyError) as info:
            enforce_password_policy("password")
        assert info.value.problems == (
            "Password is too common; choose one that is harder to guess.",
        )
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, KernelError)
        with pytest.raises(PasswordPolicyError, match="at least 8"):
            enforce_password_policy("short")
