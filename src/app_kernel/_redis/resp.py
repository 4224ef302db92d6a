"""The RESP2 wire format as the multiplexer speaks it: commands out, error replies in.

Commands are arrays of bulk strings, with arguments encoded as redis-py
encodes them. Error replies become redis-py's exception classes, chosen by the
same prefixes redis-py uses, so ``except RedisError`` code keeps working. Also
here: the commands one shared connection must never run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    DataError,
    ExecAbortError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ("CommandArg", "check_command", "error_from_reply", "pack_args", "pack_command")

CommandArg: TypeAlias = str | bytes | int | float
"""One argument of a command: text is sent as UTF-8 (lone surrogates kept)."""

# Error prefixes redis-py maps to its own classes (redis/_parsers/base.py); the
# prefix is dropped from the message, as redis-py does.
_ERROR_CLASSES: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": NoPermissionError,
    "OOM": OutOfMemoryError,
    "EXECABORT": ExecAbortError,
    "MASTERDOWN": MasterDownError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "CROSSSLOT": ClusterCrossSlotError,
}
_ERR_MESSAGES: dict[str, type[RedisError]] = {
    "max number of clients reached": RedisConnectionError,
    "invalid password": AuthenticationError,
    "AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?": AuthenticationError,
    "Client sent AUTH, but no password is set": AuthenticationError,
}

# Commands that would hold the shared connection, or change its state under
# every other caller's feet.
_BLOCKING = "blocks the connection"
_STATEFUL = "changes the state of the connection every caller shares"
_REFUSED: dict[str, str] = {
    **dict.fromkeys(
        ("BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP"),
        _BLOCKING,
    ),
    **dict.fromkeys(("WAIT", "WAITAOF", "MONITOR", "SYNC", "PSYNC"), _BLOCKING),
    **dict.fromkeys(
        ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"),
        _BLOCKING,
    ),
    **dict.fromkeys(("MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"), _STATEFUL),
    **dict.fromkeys(("SELECT", "AUTH", "HELLO", "QUIT", "RESET"), _STATEFUL),
}


def check_command(args: tuple[CommandArg, ...]) -> None:
    if not args:
        msg = "execute() needs a command name"
        raise ValueError(msg)
    upper = _upper(args[0])
    reason = _REFUSED.get(upper)
    if reason is None:
        if upper in ("XREAD", "XREADGROUP") and any(_upper(arg) == "BLOCK" for arg in args):
            reason = f"{_BLOCKING} (BLOCK)"
        elif upper == "CLIENT" and len(args) > 1 and _upper(args[1]) == "REPLY":
            reason = "would break the order of replies"
        else:
            return
    msg = (
        f"{upper} {reason}: RedisMultiplexer cannot run it; "
        "use the redis.asyncio client for such commands"
    )
    raise ValueError(msg)


def _upper(arg: CommandArg) -> str:
    if isinstance(arg, bytes):
        return arg.decode("latin-1").upper()
    if isinstance(arg, str):
        return arg.upper()
    return ""


def pack_command(args: Sequence[CommandArg]) -> bytes:
    """``args`` as one RESP2 command (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + pack_args(args)


def pack_args(args: Sequence[CommandArg]) -> bytes:
    """``args`` as consecutive RESP2 bulk strings: part of a command's array.

    A caller that sends the same command many times with one argument changing
    packs the fixed parts once and joins them (``*<count>`` header included).
    """
    parts: list[bytes] = []
    append = parts.append
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8", "surrogatepass")
        elif type(arg) is int:  # not bool, refused below as redis-py refuses it
            data = b"%d" % arg
        else:
            data = _encode_other(arg)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


def _encode_other(arg: object) -> bytes:
    # The rarer types; bool is refused as redis-py refuses it.
    if isinstance(arg, bool):
        msg = f"Invalid input of type: 'bool' ({arg!r}). Convert to bytes, str, int or float."
        raise DataError(msg)
    if isinstance(arg, bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode("ascii")
    msg = f"Invalid input of type: {type(arg).__name__!r}. Convert to bytes, str, int or float."
    raise DataError(msg)


def error_from_reply(raw: bytes) -> RedisError:
    """The exception for an error reply (the text after ``-``)."""
    message = raw.decode("utf-8", "replace")
    code, _, rest = message.partition(" ")
    cls = _ERROR_CLASSES.get(code)
    if cls is not None:
        return cls(rest)
    if code == "ERR":
        special = _ERR_MESSAGES.get(rest)
        if special is not None:
            return special(rest)
    return ResponseError(message)
