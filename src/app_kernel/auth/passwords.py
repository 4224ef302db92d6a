"""Password hashing (Argon2id) and the password policy.

The plain functions :func:`hash_password`, :func:`verify_password` and
:func:`needs_rehash` use one process-wide :class:`PasswordHasher` with the
OWASP parameters (argon2id, t=2, m=19456 KiB, p=1), built on first use so that
importing this module costs nothing. They block for tens of milliseconds:
async code should hold a :class:`PasswordHasher` and await its ``*_async``
methods, which hash in a thread behind a semaphore.

:func:`check_password_policy` follows NIST SP 800-63B and ASVS 6.2: a length
window and a list of the most common passwords, no composition rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app_kernel.errors import KernelError

if TYPE_CHECKING:
    from app_kernel.settings import AuthSettings

__all__ = (
    "OWASP_MEMORY_KIB",
    "OWASP_PARALLELISM",
    "OWASP_TIME_COST",
    "PasswordHasher",
    "PasswordPolicyError",
    "check_password_policy",
    "default_hasher",
    "enforce_password_policy",
    "hash_password",
    "needs_rehash",
    "verify_password",
)

OWASP_TIME_COST = 2
"""Argon2id iterations of the default hasher (OWASP Password Storage cheat sheet)."""
OWASP_MEMORY_KIB = 19456
"""Argon2id memory of the default hasher, in KiB (19 MiB)."""
OWASP_PARALLELISM = 1
"""Argon2id lanes of the default hasher."""
_DEFAULT_CONCURRENCY = 4
_ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")

_T = TypeVar("_T")


class PasswordHasher:
    """Argon2id hashing with bounded concurrency, wrapping argon2-cffi's hasher.

    The async methods run the hash in a worker thread; at most ``concurrency``
    of them hash at once per event loop, so a burst of logins cannot allocate
    ``memory_kib`` times the number of requests. A hash whose caller was
    cancelled keeps its slot until the thread finishes, since the thread cannot
    be stopped. The semaphore is made on first use in each loop, so the object
    can be built outside a loop and shared by several.

    Args:
        time_cost: Argon2 iterations.
        memory_kib: Argon2 memory in KiB; at least ``8 * parallelism``.
        parallelism: Argon2 lanes.
        concurrency: hashes computed at once by the async methods, per loop.

    Raises:
        ValueError: a parameter is out of range.
    """

    def __init__(
        self, *, time_cost: int, memory_kib: int, parallelism: int, concurrency: int
    ) -> None:
        if time_cost < 1 or parallelism < 1 or concurrency < 1:
            msg = (
                "time_cost, parallelism and concurrency must be at least 1, got "
                f"{time_cost}, {parallelism} and {concurrency}"
            )
            raise ValueError(msg)
        if memory_kib < 8 * parallelism:
            msg = (
                f"memory_kib must be at least 8 * parallelism ({8 * parallelism}), got {memory_kib}"
            )
            raise ValueError(msg)
        self._argon2 = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._concurrency = concurrency
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._semaphores = weakref.WeakKeyDictionary()
        # Verified against for unknown users and unusable hashes, so those
        # paths cost one hash with the live parameters (Django CVE-2016-2513).
        # Made on first use or by warm(), not here: it costs a full hash, and
        # a kernel may be built on a running event loop.
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> PasswordHasher:
        """Build from the ``argon2_*`` and ``hash_concurrency`` fields of ``auth``."""
        return cls(
            time_cost=auth.argon2_time_cost,
            memory_kib=auth.argon2_memory_kib,
            parallelism=auth.argon2_parallelism,
            concurrency=auth.hash_concurrency,
        )

    @property
    def time_cost(self) -> int:
        """Argon2 iterations."""
        return self._argon2.time_cost

    @property
    def memory_kib(self) -> int:
        """Argon2 memory in KiB."""
        return self._argon2.memory_cost

    @property
    def parallelism(self) -> int:
        """Argon2 lanes."""
        return self._argon2.parallelism

    @property
    def concurrency(self) -> int:
        """Hashes the async methods compute at once, per event loop."""
        return self._concurrency

    @property
    def dummy_hash(self) -> str:
        """A hash of a random string with the live parameters (blocking on first use)."""
        dummy = self._dummy_hash
        if dummy is None:
            dummy = self._dummy_hash = self._argon2.hash(secrets.token_urlsafe(32))
        return dummy

    async def warm(self) -> None:
        """Make :attr:`dummy_hash` in a worker thread if it is not made yet.

        The kernel calls it at start-up, so the first login of an unknown user
        costs one hash, like any other, instead of two.
        """
        if self._dummy_hash is None:
            await self._offload(getattr, self, "dummy_hash")

    def hash(self, password: str) -> str:
        """Hash ``password`` with a fresh random salt.

        Returns:
            The encoded hash, ``$argon2id$v=19$m=...,t=...,p=...$salt$hash``.

        Raises:
            TypeError: ``password`` is not a string.
            ValueError: ``password`` holds lone surrogates (it is not valid UTF-8).
        """
        if not isinstance(password, str):
            msg = f"password must be a str, got {type(password).__name__}"
            raise TypeError(msg)
        return self._argon2.hash(password)

    def verify(self, password: str, hashed: str) -> bool:
        """True when ``password`` matches ``hashed``; never raises.

        A wrong password, a non-string argument, or an empty, garbled or
        non-Argon2 hash answer False. An unusable hash still costs one hash
        against :attr:`dummy_hash`, so timing does not reveal that an account
        has no usable password (Django CVE-2024-39329).
        """
        if not isinstance(password, str):
            return False
        if not isinstance(hashed, str) or not hashed.startswith(_ARGON2_PREFIXES):
            self._burn(password)
            return False
        try:
            return self._argon2.verify(hashed, password)
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError, ValueError):
            # Garbled hash or un-encodable password: fail in the usual time.
            self._burn(password)
            return False

    def needs_rehash(self, hashed: str) -> bool:
        """True when ``hashed`` was not made with this hasher's parameters.

        Call after a successful :meth:`verify` and store a fresh hash when True.
        An unparseable hash answers True.
        """
        if not isinstance(hashed, str):
            return True
        try:
            return self._argon2.check_needs_rehash(hashed)
        except (InvalidHashError, ValueError):
            return True

    async def hash_async(self, password: str) -> str:
        """:meth:`hash` in a worker thread, behind the concurrency semaphore."""
        return await self._offload(self.hash, password)

    async def verify_async(self, password: str, hashed: str) -> bool:
        """:meth:`verify` in a worker thread, behind the concurrency semaphore."""
        return await self._offload(self.verify, password, hashed)

    async def verify_dummy_async(self, password: str) -> bool:
        """Verify ``password`` against :attr:`dummy_hash`, as for a real user.

        Used when the user is unknown, so the answer takes as long as a wrong
        password for a real user.

        Returns:
            Always False.
        """
        await self._offload(self._verify_dummy, password)
        return False

    def _verify_dummy(self, password: str) -> bool:
        return self.verify(password, self.dummy_hash)

    def _burn(self, password: str) -> None:
        with contextlib.suppress(VerificationError):
            self._argon2.verify(self.dummy_hash, password.encode("utf-8", "surrogatepass"))

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = asyncio.Semaphore(self._concurrency)
            self._semaphores[loop] = semaphore
        return semaphore

    async def _offload(self, func: Callable[..., _T], *args: object) -> _T:
        semaphore = self._semaphore()
        await semaphore.acquire()
        try:
            task = asyncio.ensure_future(asyncio.to_thread(func, *args))
        except BaseException:
            semaphore.release()
            raise

        def done(finished: asyncio.Future[_T]) -> None:
            # The slot is freed when the thread ends, not when the caller gives
            # up waiting: a cancelled login still holds its memory until then.
            semaphore.release()
            if not finished.cancelled():
                finished.exception()  # mark retrieved; the caller may be gone

        task.add_done_callback(done)
        return await asyncio.shield(task)


@functools.lru_cache(maxsize=1)
def default_hasher() -> PasswordHasher:
    """The process-wide hasher with the OWASP parameters, built on first call.

    Its async methods allow 4 hashes at once per event loop.
    """
    return PasswordHasher(
        time_cost=OWASP_TIME_COST,
        memory_kib=OWASP_MEMORY_KIB,
        parallelism=OWASP_PARALLELISM,
        concurrency=_DEFAULT_CONCURRENCY,
    )


def hash_password(password: str) -> str:
    """Hash a password with the default Argon2id hasher.

    Blocks for tens of milliseconds; in async code await
    :meth:`PasswordHasher.hash_async` instead.

    Args:
        password: the password in clear.

    Returns:
        The encoded hash to store.

    Raises:
        TypeError: ``password`` is not a string.
    """
    return default_hasher().hash(password)


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches ``hashed``; False otherwise, never raises.

    Blocks like :func:`hash_password`. A wrong password, a non-string argument,
    and an empty, garbled or unknown-format hash all answer False.

    Args:
        password: the password in clear.
        hashed: the stored hash.
    """
    return default_hasher().verify(password, hashed)


def needs_rehash(hashed: str) -> bool:
    """True when ``hashed`` was not made with the default hasher's parameters.

    Args:
        hashed: a stored hash that just verified.
    """
    return default_hasher().needs_rehash(hashed)


# --- policy ------------------------------------------------------------------------------

# Most common passwords from public breach corpora (SecLists top lists, NordPass
# yearly lists), lower-case. Compared after casefold(), so "Password" is caught.
_COMMON_PASSWORDS = frozenset(
    # A word list reads and diffs better than 200 quoted strings.
    """
    123456 123456789 12345678 password qwerty 12345 1234567 111111 123123 1234567890
    000000 1234 abc123 password1 iloveyou 1q2w3e4r qwerty123 qwertyuiop 123321 654321
    666666 121212 7777777 555555 987654321 123qwe 1qaz2wsx zaq12wsx qazwsx 1q2w3e
    1q2w3e4r5t 1q2w3e4r5t6y q1w2e3r4 q1w2e3r4t5 qwer1234 1234qwer asdf1234 abcd1234
    abc12345 aa123456 aa12345678 a123456 a123456789 123456a 123456789a 12qwaszx 1qazxsw2
    qazwsxedc qweasdzxc 123qweasd 1qaz2wsx3edc asdfghjkl asdfgh asdfasdf zxcvbnm
    zxcvbn qwertyui qwerty12 qwerty1234 qwerty12345 azerty azerty123 qwertz qwertz123
    11111111 1111111111 00000000 0000000000 88888888 99999999 66666666 22222222
    55555555 77777777 12121212 11223344 12344321 123454321 1234554321 0123456789
    0987654321 01234567 87654321 123123123 147258369 123654789 741852963 159753
    159357 147258 112233 131313 696969 password12 password123 password1234 password!
    password2 passw0rd p@ssw0rd p@ssword pa55word pass1234 pass123 passwort motdepasse
    contraseña senha parola admin admin123 admin1234 administrator root toor changeme
    changeme123 default guest letmein letmein1 letmein123 welcome welcome1 welcome123
    secret secret123 trustno1 master master123 login login123 test test123 test1234
    testing qwe123 qwe123qwe abcdefgh abcdef abcdefg1 abcd123 iloveyou1 iloveyou2
    iloveu loveme lovely princess princess1 sunshine sunshine1 football football1
    baseball baseball1 basketball soccer hockey superman superman1 batman starwars
    dragon dragon123 monkey monkey123 shadow shadow123 michael michael1 jennifer
    jessica charlie charlie1 jordan jordan23 daniel thomas robert hunter buster
    tigger pepper ginger maggie summer freedom whatever computer internet samsung
    google facebook chocolate butterfly liverpool arsenal chelsea mustang harley
    killer cheese ashley nicole matthew andrew joshua michelle babygirl blessed
    christmas
    """.split()  # noqa: SIM905
)


class PasswordPolicyError(KernelError, ValueError):
    """A password the policy refuses.

    Attributes:
        problems: the sentences :func:`check_password_policy` answered.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(" ".join(problems))


def check_password_policy(
    password: str, *, min_length: int = 8, max_length: int = 256
) -> list[str]:
    """The problems a new password has, as sentences; empty when it is acceptable.

    Checks the length in characters (a too-long password is answered before any
    other work), then a built-in list of the most common passwords, compared
    case-insensitively. There are no composition rules (NIST SP 800-63B, ASVS 6.2).

    Args:
        password: the proposed password.
        min_length: shortest length accepted.
        max_length: longest length accepted.

    Returns:
        Human-readable problems, such as ``"Password must be at least 8 characters."``.

    Raises:
        ValueError: ``min_length`` is below 1 or above ``max_length``.
    """
    if min_length < 1 or min_length > max_length:
        msg = f"expected 1 <= min_length <= max_length, got {min_length} and {max_length}"
        raise ValueError(msg)
    if not isinstance(password, str):
        return ["Password must be a string."]
    if len(password) > max_length:
        return [f"Password must be at most {max_length} characters."]
    problems = []
    if len(password) < min_length:
        problems.append(f"Password must be at least {min_length} characters.")
    if password.casefold() in _COMMON_PASSWORDS:
        problems.append("Password is too common; choose one that is harder to guess.")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        problems.append("Password contains invalid characters.")
    return problems


def enforce_password_policy(password: str, *, min_length: int = 8, max_length: int = 256) -> None:
    """Raise when :func:`check_password_policy` finds a problem.

    Args:
        password: the proposed password.
        min_length: shortest length accepted.
        max_length: longest length accepted.

    Raises:
        PasswordPolicyError: with the problems found.
    """
    problems = check_password_policy(password, min_length=min_length, max_length=max_length)
    if problems:
        raise PasswordPolicyError(problems)
