"""Parse environment variables, naming the variable in every error."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from app_kernel.errors import SettingsError

__all__ = (
    "env_value",
    "parse_bool",
    "parse_choice",
    "parse_csv",
    "parse_float",
    "parse_int",
    "parse_str",
    "signup_from_env",
)

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_str(var: str, raw: str) -> str:
    del var
    return raw


def parse_bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    msg = f"{var}: expected true or false (also 1/0, yes/no, on/off), got {raw!r}"
    raise SettingsError(msg)


def parse_int(var: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        msg = f"{var}: expected a whole number, got {raw!r}"
        raise SettingsError(msg) from None


def parse_float(var: str, raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        msg = f"{var}: expected a number, got {raw!r}"
        raise SettingsError(msg) from None


def parse_csv(var: str, raw: str) -> tuple[str, ...]:
    del var
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_choice(choices: Sequence[str]) -> Callable[[str, str], str]:
    def parse(var: str, raw: str) -> str:
        value = raw.strip().lower()
        if value in choices:
            return value
        expected = ", ".join(repr(c) for c in choices)
        msg = f"{var}: expected one of {expected}, got {raw!r}"
        raise SettingsError(msg)

    return parse


def env_value(var: str, parser: Callable[[str, str], T]) -> T | None:
    """Read ``var`` with ``parser``; an unset or empty variable gives None."""
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return None
    return parser(var, raw)


def signup_from_env() -> bool | None:
    """Self-signup from ``KERNEL_ALLOW_SIGNUP`` or ``ALLOW_SELF_SIGNUP``.

    Both exist because the spec documents both; set to different values they
    contradict each other and the kernel refuses to guess.
    """
    kernel = env_value("KERNEL_ALLOW_SIGNUP", parse_bool)
    service = env_value("ALLOW_SELF_SIGNUP", parse_bool)
    if kernel is not None and service is not None and kernel != service:
        msg = (
            "ALLOW_SELF_SIGNUP and KERNEL_ALLOW_SIGNUP disagree "
            f"({service} and {kernel}): set one of them, or both to the same value"
        )
        raise SettingsError(msg)
    return kernel if kernel is not None else service
