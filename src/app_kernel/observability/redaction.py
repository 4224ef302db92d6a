"""Secrets kept out of logs: credential-like keys and in-text credentials redacted."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from structlog.typing import EventDict, WrappedLogger

__all__ = (
    "REDACTED",
    "is_secret_key",
    "may_hold_secret",
    "redact_secrets",
    "scrub_text",
    "secret_keys",
)

REDACTED = "[redacted]"
_TOO_DEEP = "[too deep]"
_MAX_DEPTH = 6

# Words that make a key's value a secret, matched against the key's parts
# ("refresh_token", "X-API-Key") so that "max_tokens" or "passenger" stay visible.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pass",
        "pwd",
        "secret",
        "token",
        "jwt",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "apikey",
        "privatekey",
        "signature",
    }
)
_KEY_PARTS = re.compile(r"[^a-z0-9]+")
# Bearer credentials and URL passwords inside free text.
_SECRET_TEXT = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
    (re.compile(r"\bak_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}"), REDACTED),
)


# A credential given a value inside text: ``password=hunter2`` anywhere,
# ``"client_secret": "x"`` (JSON, Python reprs) anywhere, and ``X-API-Key: abc``
# at the start of a line (a header dump). A bare ``name: value`` elsewhere is
# prose ("started without JWT_SECRET: tokens are..."), so it is left alone. The
# name is judged by is_secret_key, so ``max_tokens=5`` stays as it is.
_ASSIGNED_NAME = re.compile(
    r"""(?<=["'])([A-Za-z][\w.-]*)(["']\s*:\s*)"""
    r"""|^([A-Za-z][\w.-]*)(:[ \t]*)"""
    r"""|\b([A-Za-z][\w.-]*)(\s*=(?!=)\s*)""",  # not "==": code in a traceback
    re.MULTILINE,
)
_ASSIGNED_VALUE = re.compile(r"""\[redacted\]|"[^"]*"|'[^']*'|[^\s&,;"')\]}]+""")
# Substrings of every word in _SECRET_WORDS: text without any of them names no secret.
_SECRET_STEMS = ("pass", "pwd", "secret", "token", "jwt", "auth", "cookie", "cred", "key", "sig")


def _redact_assignments(text: str) -> str:
    """Values assigned to credential names replaced. Names are found one after the
    other, values never skipped over, so ``note: password=x`` loses ``x``."""
    parts: list[str] = []
    done = 0
    for name in _ASSIGNED_NAME.finditer(text):
        key = name.group(1) or name.group(3) or name.group(5)
        if name.start() < done or not is_secret_key(key):
            continue
        value = _ASSIGNED_VALUE.match(text, name.end())
        if value is None or value.group(0) == REDACTED:
            continue
        parts += (text[done : name.end()], REDACTED)
        done = value.end()
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def may_hold_secret(text: str) -> bool:
    """False when no pattern above can match ``text``: plain substring tests, which
    cost a fraction of one regular-expression search (most log text holds no secret)."""
    if "ak_" in text or ("@" in text and "://" in text):
        return True
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        return True
    return ("=" in text or ":" in text) and any(stem in lowered for stem in _SECRET_STEMS)


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """True when a field named ``name`` holds a credential (``password``, ``api_key`` ...)."""
    lowered = name.lower()
    parts = [part for part in _KEY_PARTS.split(lowered) if part]
    if any(part in _SECRET_WORDS for part in parts):
        return True
    joined = "".join(parts)
    return "apikey" in joined or "privatekey" in joined or "password" in joined


def scrub_text(text: str) -> str:
    """``text`` with bearer tokens, API keys, URL passwords and the values of
    credential-named assignments (``password=...``, ``"token": "..."``) replaced."""
    if not may_hold_secret(text):
        return text
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return _redact_assignments(text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if depth >= _MAX_DEPTH and isinstance(value, Mapping | list | tuple):
        # Deeper than anyone logs on purpose; hide it rather than risk a secret.
        return _TOO_DEEP
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


@functools.lru_cache(maxsize=1024)
def secret_keys(keys: tuple[str, ...]) -> frozenset[str]:
    """Which of ``keys`` hold credentials (a logger writes the same key set again and again)."""
    return frozenset(key for key in keys if is_secret_key(key))


_PLAIN = (int, float, bool, type(None))


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide values of credential-like keys and in-text secrets."""
    del logger, method_name
    secret = secret_keys(tuple(event_dict))
    texts: list[str] = []
    for key, value in event_dict.items():  # values are replaced, never added or removed
        kind = type(value)
        if key in secret:
            event_dict[key] = REDACTED
        elif kind is str:
            texts.append(value)
        elif kind in _PLAIN:
            continue
        elif key in ("event", "exception") or isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _scrub(value)
    # One search over every plain string (the separator is whitespace, so no
    # pattern can match across two values); most lines hold no secret at all.
    if texts and may_hold_secret("\n".join(texts)):
        for key, value in event_dict.items():
            if type(value) is str and key not in secret:
                event_dict[key] = scrub_text(value)
    return event_dict
