"""RedisMultiplexer against a real Redis: replies, errors, concurrency, failures, TLS.

One test drives the RESP2 parser with a fake transport, to split replies at
every byte; every other test talks to a real server.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from _script_flush import flush_after_reloads
from _services import free_port
from app_kernel._redis.lua import NOSCRIPT_ATTEMPTS
from app_kernel._redis.mux import LuaScript, RedisMultiplexer, RespProtocol

# Busy-loops on the server for ARGV[1] microseconds (TIME is allowed in scripts
# since Redis 5's effect replication).
BUSY = """
local start = redis.call('TIME')
local t0 = start[1] * 1000000 + start[2]
repeat
  local now = redis.call('TIME')
until now[1] * 1000000 + now[2] - t0 >= tonumber(ARGV[1])
return 1
"""


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client to look behind the multiplexer's back."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def mux_for(url: str, **options: Any) -> RedisMultiplexer:
    options.setdefault("socket_timeout", 2.0)
    return RedisMultiplexer.for_client(redis.asyncio.Redis.from_url(url), **options)


@pytest.fixture
async def mux(redis_url: str) -> AsyncIterator[RedisMultiplexer]:
    multiplexer = mux_for(redis_url)
    yield multiplexer
    await multiplexer.aclose()


def _summary(value: Any) -> Any:
    """Replies with exception instances made comparable."""
    if isinstance(value, BaseException):
        return (type(value), str(value))
    if isinstance(value, list):
        return [_summary(item) for item in value]
    return value


# --- replies -----------------------------------------------------------------------------


async def test_every_reply_type(mux: RedisMultiplexer, redis_key_prefix: str) -> None:
    key = f"{redis_key_prefix}k"
    assert await mux.execute("PING") == b"PONG"  # simple string
    assert await mux.execute("SET", key, b"v\r\n\x00") == b"OK"
    assert await mux.execute("GET", key) == b"v\r\n\x00"  # bulk string
    assert await mux.execute("GET", f"{redis_key_prefix}missing") is None  # nil
    assert await mux.execute("INCRBY", f"{redis_key_prefix}n", -7) == -7  # integer
    assert await mux.execute("INCRBYFLOAT", f"{redis_key_prefix}f", 1.5) == b"1.5"  # float arg
    assert await mux.execute("ECHO", "h\u00e9 \udcff") == "h\u00e9 \udcff".encode(
        "utf-8", "surrogatepass"
    )
    assert await mux.execute("ECHO", "") == b""
    await mux.execute("RPUSH", f"{redis_key_prefix}l", "a", "b", 3)
    assert await mux.execute("LRANGE", f"{redis_key_prefix}l", 0, -1) == [b"a", b"b", b"3"]
    assert await mux.execute("LRANGE", f"{redis_key_prefix}missing", 0, -1) == []
    nested = "return {1, {2, {'x', {}}}, false, 'y', redis.error_reply('OOPS deep')}"
    reply = await mux.execute("EVAL", nested, 0)
    assert reply[:4] == [1, [2, [b"x", []]], None, b"y"]
    assert isinstance(reply[4], ResponseError)
    assert str(reply[4]) == "OOPS deep"


async def test_large_bulk_strings(mux: RedisMultiplexer, redis_key_prefix: str) -> None:
    """1 MB values cross many reads; the ones around them keep their order."""
    big = os.urandom(1 << 20) + b"\r\n$5\r\n"
    key = f"{redis_key_prefix}big"
    assert await mux.execute("SET", key, big) == b"OK"
    replies = await asyncio.gather(
        mux.execute("GET", key),
        mux.execute("ECHO", "after"),
        mux.execute("MGET", key, f"{redis_key_prefix}missing", key),
    )
    assert replies == [big, b"after", [big, None, big]]


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b"-ERR bad thing\r\n", ResponseError("ERR bad thing")),
    (b":-42\r\n", -42),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (
        b"*4\r\n:1\r\n*2\r\n$1\r\nx\r\n*0\r\n-NOSCRIPT gone\r\n+\r\n",
        [1, [b"x", []], NoScriptError("gone"), b""],
    ),
    (b"-NOSCRIPT No matching script\r\n", NoScriptError("No matching script")),
    (b"*2\r\n*1\r\n*1\r\n$-1\r\n$3\r\n\r\n*\r\n", [[[None]], b"\r\n*"]),
    (b":0\r\n", 0),
]
STREAM = b"".join(raw for raw, _ in REPLIES)


async def _feed(chunks: list[bytes]) -> list[Any]:
    """Send one command per reply in REPLIES, feed ``chunks``, return the outcomes."""
    protocol = RespProtocol(asyncio.get_running_loop(), timeout_seconds=60)
    transport = _FakeTransport()
    protocol.connection_made(transport)
    futures = [protocol.send(b"*1\r\n$4\r\nPING\r\n") for _ in REPLIES]
    for n, chunk in enumerate(chunks, 1):
        protocol.data_received(chunk)
        if n % 64 == 0:
            await asyncio.sleep(0)  # debug-mode futures are slow; don't hog the loop
    outcomes = [f.exception() or f.result() if f.done() else "pending" for f in futures]
    assert protocol.pending == 0
    assert not transport.aborted
    protocol.abort()
    return [_summary(outcome) for outcome in outcomes]


async def test_parser_handles_replies_split_at_every_byte() -> None:
    expected = [_summary(value) for _, value in REPLIES]
    assert await _feed([STREAM]) == expected
    assert await _feed([STREAM[i : i + 1] for i in range(len(STREAM))]) == expected
    for cut in range(1, len(STREAM)):
        assert await _feed([STREAM[:cut], STREAM[cut:]]) == expected, cut
        await asyncio.sleep(0)  # 16 feeds in one step took 0.102 s on a slow machine


async def test_parser_drops_the_reply_of_a_cancelled_caller() -> None:
    protocol = RespProtocol(asyncio.get_running_loop(), timeout_seconds=60)
    protocol.connection_made(_FakeTransport())
    first, second = protocol.send(b"a"), protocol.send(b"b")
    first.cancel()
    protocol.data_received(b":1\r\n:")
    assert not second.done()
    protocol.data_received(b"2\r\n")
    assert second.result() == 2
    protocol.abort()


async def test_parser_fails_everything_on_garbage() -> None:
    protocol = RespProtocol(asyncio.get_running_loop(), timeout_seconds=60)
    transport = _FakeTransport()
    protocol.connection_made(transport)
    ok, bad, later = protocol.send(b"a"), protocol.send(b"b"), protocol.send(b"c")
    protocol.data_received(b"+OK\r\n?what\r\n")
    assert ok.result() == b"OK"
    for future in (bad, later):
        with pytest.raises(RedisConnectionError, match="Protocol error"):
            future.result()
    assert transport.aborted
    assert protocol.closed
    with pytest.raises(RedisConnectionError):
        protocol.send(b"d")


async def test_protocol_times_out_and_bounds_pending_calls() -> None:
    protocol = RespProtocol(asyncio.get_running_loop(), timeout_seconds=0.05, max_pending=2)
    transport = _FakeTransport()
    protocol.connection_made(transport)
    calls = [protocol.send(b"a"), protocol.send(b"b")]
    with pytest.raises(RedisConnectionError, match="already waiting"):
        protocol.send(b"c")
    for call in calls:
        with pytest.raises(RedisTimeoutError):
            await call
    assert transport.aborted


# --- errors ------------------------------------------------------------------------------


async def test_error_replies_map_to_redis_py_classes(mux: RedisMultiplexer) -> None:
    """Each error fails its own call; the connection stays the same."""
    client_id = await mux.execute("CLIENT", "ID")
    with pytest.raises(ResponseError, match="unknown command") as unknown:
        await mux.execute("NOSUCHCOMMAND", "x")
    assert type(unknown.value) is ResponseError
    with pytest.raises(NoScriptError):
        await mux.execute("EVALSHA", "0" * 40, 0)
    cases: list[tuple[str, type[RedisError]]] = [
        ("READONLY You can't write against a read only replica.", ReadOnlyError),
        ("LOADING Redis is loading the dataset in memory", BusyLoadingError),
        ("NOAUTH Authentication required.", AuthenticationError),
        ("WRONGPASS invalid username-password pair", AuthenticationError),
        ("NOSCRIPT No matching script.", NoScriptError),
        ("NOPERM no permission", NoPermissionError),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", ResponseError),
    ]
    for message, error in cases:
        with pytest.raises(error) as raised:
            await mux.execute("EVAL", "return redis.error_reply(ARGV[1])", 0, message)
        assert type(raised.value) is error
        assert await mux.execute("ECHO", message) == message.encode()
    assert await mux.execute("CLIENT", "ID") == client_id


async def test_blocking_and_connection_state_commands_are_refused(mux: RedisMultiplexer) -> None:
    for command in (
        ("BLPOP", "k", 0),
        ("blpop", "k", 0),
        (b"BZPOPMIN", "k", 0),
        ("WAIT", 1, 0),
        ("SUBSCRIBE", "c"),
        ("MULTI",),
        ("SELECT", 1),
        ("XREAD", "block", 0, "STREAMS", "s", "$"),
        ("CLIENT", "REPLY", "OFF"),
    ):
        with pytest.raises(ValueError, match="RedisMultiplexer cannot run it"):
            await mux.execute(*command)
    assert await mux.execute("XREAD", "COUNT", 1, "STREAMS", "no-such-stream", "0") is None


# --- concurrency and scripts -------------------------------------------------------------


async def test_two_thousand_concurrent_calls_get_their_own_replies(
    mux: RedisMultiplexer, redis_key_prefix: str
) -> None:
    client_id = await mux.execute("CLIENT", "ID")
    run = uuid.uuid4().hex

    async def incr(i: int) -> Any:
        return await mux.execute("INCRBY", f"{redis_key_prefix}n{i}", i + 1)

    async def echo(i: int) -> Any:
        return await mux.execute("ECHO", f"{run}:{i}")

    tasks: list[asyncio.Task[Any]] = []
    for i in range(1000):
        tasks += [asyncio.create_task(incr(i)), asyncio.create_task(echo(i))]
        if i % 25 == 24:
            await asyncio.sleep(0)  # task creation is slow in debug mode
    # One await per task: gathering 2,000 at once is one slow step in debug mode.
    replies = [await task for task in tasks]
    assert replies[0::2] == [i + 1 for i in range(1000)]
    assert replies[1::2] == [f"{run}:{i}".encode() for i in range(1000)]
    assert await mux.execute("CLIENT", "ID") == client_id  # all of it on one connection


async def test_evalsha_reloads_after_script_flush(
    mux: RedisMultiplexer, admin: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    script = LuaScript(f"return {{KEYS[1], ARGV[1], '{uuid.uuid4().hex}'}}")
    key = f"{redis_key_prefix}s"
    assert (await mux.evalsha(script, [key], ["a"]))[:2] == [key.encode(), b"a"]
    assert await admin.script_exists(script.sha) == [True]  # the local SHA1 is Redis's
    await admin.script_flush()
    replies = await asyncio.gather(*(mux.evalsha(script, [key], [i]) for i in range(20)))
    assert [reply[1] for reply in replies] == [str(i).encode() for i in range(20)]


async def test_evalsha_survives_a_flush_between_reload_and_retry(
    mux: RedisMultiplexer,
    admin: redis.asyncio.Redis,
    redis_key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = LuaScript(f"return {{ARGV[1], '{uuid.uuid4().hex}'}}")  # not loaded yet
    left = flush_after_reloads(monkeypatch, admin, times=NOSCRIPT_ATTEMPTS - 2)

    assert (await mux.evalsha(script, [f"{redis_key_prefix}s"], ["a"]))[0] == b"a"
    assert left == [0]


async def test_evalsha_gives_up_when_every_reload_is_flushed(
    mux: RedisMultiplexer,
    admin: redis.asyncio.Redis,
    redis_key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = LuaScript(f"return {{ARGV[1], '{uuid.uuid4().hex}'}}")
    left = flush_after_reloads(monkeypatch, admin, times=100)

    with pytest.raises(NoScriptError):
        await mux.evalsha(script, [f"{redis_key_prefix}s"], ["a"])
    assert left == [100 - (NOSCRIPT_ATTEMPTS - 1)]  # a reload after every try but the last


async def test_first_callers_share_one_connect(mux: RedisMultiplexer) -> None:
    ids = await asyncio.gather(*(mux.execute("CLIENT", "ID") for _ in range(50)))
    assert len(set(ids)) == 1


async def test_pending_calls_are_bounded(redis_url: str) -> None:
    mux = mux_for(redis_url, max_pending=10)
    try:
        await mux.execute("PING")
        replies = await asyncio.gather(
            *(mux.execute("PING") for _ in range(11)), return_exceptions=True
        )
        assert replies.count(b"PONG") == 10
        assert [type(reply) for reply in replies if reply != b"PONG"] == [RedisConnectionError]
        assert await mux.execute("PING") == b"PONG"
    finally:
        await mux.aclose()


# --- AUTH and SELECT ---------------------------------------------------------------------


@dataclass
class AclUser:
    name: str
    password: str
    url: str
    db: int
    prefix: str
    admin_url: str
    """The test's own server URL, on ``db``."""


@pytest.fixture
async def acl_user(
    redis_url: str, admin: redis.asyncio.Redis, redis_key_prefix: str
) -> AsyncIterator[AclUser]:
    """A throwaway ACL user limited to ``redis_key_prefix*``, and a URL for it on another db."""
    name = f"mux-test-{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    parts = urlsplit(redis_url)
    current = int(parts.path.strip("/") or 0)
    db = 2 if current == 1 else 1
    url = f"redis://{name}:{password}@{parts.hostname}:{parts.port or 6379}/{db}"
    admin_url = urlunsplit(parts._replace(path=f"/{db}"))
    await admin.execute_command(
        "ACL", "SETUSER", name, "on", f">{password}", f"~{redis_key_prefix}*", "+@all"
    )
    try:
        yield AclUser(name, password, url, db, redis_key_prefix, admin_url)
    finally:
        await admin.execute_command("ACL", "DELUSER", name)
        other_db = redis.asyncio.Redis.from_url(admin_url)
        keys = [key async for key in other_db.scan_iter(match=f"{redis_key_prefix}*")]
        if keys:
            await other_db.delete(*keys)
        await other_db.aclose()


async def test_auth_and_select(acl_user: AclUser, admin: redis.asyncio.Redis) -> None:
    mux = mux_for(acl_user.url)
    key = f"{acl_user.prefix}k"
    try:
        assert await mux.execute("ACL", "WHOAMI") == acl_user.name.encode()
        assert await mux.execute("SET", key, "in-db") == b"OK"
        with pytest.raises(NoPermissionError):
            await mux.execute("SET", "not-my-prefix", "x")
        assert await mux.execute("GET", key) == b"in-db"  # still usable
    finally:
        await mux.aclose()
    assert await admin.get(key) is None  # not in the test's own db...
    other = redis.asyncio.Redis.from_url(acl_user.admin_url)
    try:
        assert await other.get(key) == b"in-db"  # ...but in the selected one
    finally:
        await other.aclose()


async def test_wrong_password_is_an_authentication_error(acl_user: AclUser) -> None:
    mux = mux_for(acl_user.url.replace(acl_user.password, "wrong"))
    try:
        with pytest.raises(AuthenticationError):
            await mux.execute("PING")
    finally:
        await mux.aclose()


# --- connection failures -----------------------------------------------------------------


async def test_killed_connection_fails_pending_calls_then_reconnects(
    mux: RedisMultiplexer, admin: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    client_id = await mux.execute("CLIENT", "ID")
    await admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # hold the writes in flight
    try:
        calls = [
            asyncio.create_task(mux.execute("INCR", f"{redis_key_prefix}c")) for _ in range(20)
        ]
        await asyncio.sleep(0.05)
        assert not any(call.done() for call in calls)
        assert await admin.execute_command("CLIENT", "KILL", "ID", client_id) == 1
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(result, RedisConnectionError) for result in results), results
    assert await mux.execute("CLIENT", "ID") != client_id
    assert await admin.get(f"{redis_key_prefix}c") is None


async def test_aclose_fails_pending_calls_and_is_idempotent(
    mux: RedisMultiplexer, admin: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    await mux.execute("PING")
    await admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    try:
        call = asyncio.create_task(mux.execute("INCR", f"{redis_key_prefix}c"))
        await asyncio.sleep(0.02)
        await mux.aclose()
        await mux.aclose()
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
    with pytest.raises(RedisConnectionError, match="closed by client"):
        await call
    assert await mux.execute("PING") == b"PONG"  # a later call connects again


async def test_cancelled_caller_does_not_shift_replies(
    mux: RedisMultiplexer, admin: redis.asyncio.Redis, redis_key_prefix: str
) -> None:
    await mux.execute("PING")
    await admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    try:
        first = asyncio.create_task(mux.execute("INCRBY", f"{redis_key_prefix}c", 41))
        second = asyncio.create_task(mux.execute("ECHO", "second"))
        await asyncio.sleep(0.02)
        first.cancel()
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
    assert await second == b"second"
    assert await mux.execute("INCR", f"{redis_key_prefix}c") == 42  # the cancelled INCRBY ran


async def test_timeout_fails_pending_calls_then_recovers(
    redis_url: str, admin: redis.asyncio.Redis
) -> None:
    mux = mux_for(redis_url, socket_timeout=0.1)
    try:
        await mux.execute("PING")
        results = await asyncio.gather(
            mux.execute("EVAL", BUSY, 0, 400_000),  # the server is busy for 0.4 s
            mux.execute("PING"),
            return_exceptions=True,
        )
        assert [type(result) for result in results] == [RedisTimeoutError] * 2
        assert await admin.ping()  # returns once the script has finished
        assert await mux.execute("PING") == b"PONG"
    finally:
        await mux.aclose()


async def test_connection_refused_is_a_connection_error() -> None:
    """Refused, not timed out: the error comes at once even with a long timeout."""
    mux = RedisMultiplexer(host="127.0.0.1", port=free_port(), socket_timeout=30)
    for _ in range(2):
        with pytest.raises(RedisConnectionError, match="Error connecting"):
            await mux.execute("PING")
    await mux.aclose()


def test_usable_from_event_loops_in_sequence(redis_url: str) -> None:
    """A new loop gets a new connection; the old loop's is closed, nothing leaks."""
    mux = mux_for(redis_url)

    async def client_id() -> int:
        reply: int = await mux.execute("CLIENT", "ID")
        return reply

    with asyncio.Runner() as first:
        id1 = first.run(client_id())
    # ``first`` closed its loop, and the connection with it.
    with asyncio.Runner() as second:
        id2 = second.run(client_id())
        with asyncio.Runner() as third:  # ``second`` is still open, not running
            id3 = third.run(client_id())
            assert third.run(client_id()) == id3
            third.run(mux.aclose())
        assert second.run(client_id()) not in (id1, id2, id3)
    assert len({id1, id2, id3}) == 3
    gc.collect()  # an unclosed transport would warn now (and fail the test)


# --- TLS and unix sockets, on a private server -------------------------------------------


@dataclass
class PrivateRedis:
    tls_port: int
    unix_path: Path
    ca: Path
    client_cert: Path
    client_key: Path


def _write_certificates(directory: Path) -> tuple[Path, Path, Path, Path, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(
        name: str, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey | None, **ext: Any
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        )
        if "san" in ext:
            builder = builder.add_extension(x509.SubjectAlternativeName(ext["san"]), False)
        return builder.sign(signer or key, hashes.SHA256()), key

    def save(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path = directory / f"{stem}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_cert, ca_key = issue("mux-test-ca", None, None)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert, server_key = issue("127.0.0.1", ca_cert.subject, ca_key, san=san)
    client_cert, client_key = issue("mux-test-client", ca_cert.subject, ca_key)
    ca = save("ca", ca_cert, ca_key)
    server = save("server", server_cert, server_key)
    client = save("client", client_cert, client_key)
    return ca, server, directory / "server.key", client, directory / "client.key"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A throwaway ``redis-server`` with TLS (client certificates required) and a unix socket."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary for the TLS / unix socket tests")
    directory = tmp_path_factory.mktemp("redis-tls")
    ca, server_cert, server_key, client_cert, client_key = _write_certificates(directory)
    port = free_port()
    unix_path = directory / "redis.sock"
    # fmt: off
    argv = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--unixsocket", str(unix_path), "--unixsocketperm", "700",
        "--tls-cert-file", str(server_cert), "--tls-key-file", str(server_key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "yes",
        "--save", "", "--appendonly", "no", "--dir", str(directory),
    ]
    # fmt: on
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not unix_path.exists():
            if process.poll() is not None:
                pytest.skip(
                    f"redis-server without TLS support? it exited with {process.returncode}"
                )
            if time.monotonic() > deadline:
                pytest.fail("the private redis-server did not come up")
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        yield PrivateRedis(port, unix_path, ca, client_cert, client_key)
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _tls_mux(server: PrivateRedis, query: str) -> RedisMultiplexer:
    client = redis.asyncio.Redis.from_url(f"rediss://127.0.0.1:{server.tls_port}/0?{query}")
    # Certificate files are read when the TLS context is built: off the loop.
    return await asyncio.to_thread(RedisMultiplexer.for_client, client, socket_timeout=2.0)


async def test_tls_with_client_certificate(private_redis: PrivateRedis) -> None:
    files = f"ssl_certfile={private_redis.client_cert}&ssl_keyfile={private_redis.client_key}"
    verified = await _tls_mux(private_redis, f"ssl_ca_certs={private_redis.ca}&{files}")
    unverified = await _tls_mux(private_redis, f"ssl_cert_reqs=none&{files}")
    unknown_ca = await _tls_mux(private_redis, files)
    no_client_cert = await _tls_mux(private_redis, f"ssl_ca_certs={private_redis.ca}")
    try:
        assert await verified.execute("ECHO", "over tls") == b"over tls"
        assert await unverified.execute("PING") == b"PONG"
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await unknown_ca.execute("PING")
        with pytest.raises(RedisConnectionError, match=r"(?i)certificate required"):
            await no_client_cert.execute("PING")
    finally:
        for mux in (verified, unverified, unknown_ca, no_client_cert):
            await mux.aclose()


async def test_unix_socket_and_client_name(private_redis: PrivateRedis) -> None:
    client = redis.asyncio.Redis.from_url(
        f"unix://{private_redis.unix_path}?db=3&client_name=mux-test"
    )
    mux = RedisMultiplexer.for_client(client, socket_timeout=2.0)
    try:
        assert await mux.execute("CLIENT", "GETNAME") == b"mux-test"
        assert b" db=3 " in await mux.execute("CLIENT", "INFO")
    finally:
        await mux.aclose()
