"""One pipelined Redis connection shared by every concurrent caller of an event loop.

Why: a ``redis.asyncio`` command costs 100-250 µs of CPU under concurrency (pool
checkout and release, the retry wrapper, a timeout per call, observability
hooks), and its pool raises ``MaxConnectionsError`` once more calls are in
flight than it has connections. The kernel's hot path is one rate-limit
EVALSHA per HTTP request. :class:`RedisMultiplexer` writes the commands called
during one pass of the event loop to one connection in a single write, and hands
the replies back in the order the commands were sent (Redis answers a
connection's commands in order), parsing RESP2 incrementally as bytes arrive.
That costs a few tens of µs per command and has no limit on concurrent callers
other than a memory bound.

Failure model, in redis-py's exception classes so ``except RedisError`` keeps
working:

* an error reply fails that one call (``NoScriptError``, ``ResponseError``...)
  and the connection stays in use;
* a lost connection, a protocol error or a timeout closes the connection and
  fails every call waiting on it (``ConnectionError`` / ``TimeoutError``); the
  next call connects again. A call whose caller was cancelled keeps its place
  in the queue and its reply is dropped, so no caller ever gets another's reply.

The timeout is a socket timeout: it fires when calls are waiting and no byte
has arrived for ``socket_timeout`` seconds (one timer per connection, nothing
per call). Commands queued behind a slow one wait for it, as on any single
Redis connection.

Not for commands that block the connection or change its state for every
caller: ``BLPOP``, ``BZPOPMIN``, ``XREAD ... BLOCK``, ``WAIT``, ``SUBSCRIBE``,
``MONITOR``, ``MULTI``/``EXEC``/``WATCH``, ``SELECT``, ``AUTH``, ``HELLO``,
``CLIENT REPLY``... :meth:`RedisMultiplexer.execute` refuses them with
``ValueError``; use the kernel's ``redis.asyncio`` client for those.

Only RESP2 is spoken. The instance is not thread-safe: use it from one event
loop at a time. When it is used from another loop (tests make one per test),
the connection of the old loop is dropped and a new one is made; a connection
is also closed when its loop is shut down by ``asyncio.run``/``asyncio.Runner``
(which cancel the loop's tasks).

Imported only when ``REDIS_URL`` is set: it needs the ``redis`` extra.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ssl
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app_kernel._redis.lua import NOSCRIPT_ATTEMPTS, encode
from app_kernel._redis.resp import CommandArg, check_command, error_from_reply, pack_command

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ("CommandArg", "LuaScript", "RedisMultiplexer", "RespProtocol")

DEFAULT_MAX_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script and its SHA1, computed locally (what ``SCRIPT LOAD`` returns).

    Args:
        text: the script's source.
    """

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(encode(self.text), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", sha)


class RespProtocol(asyncio.Protocol):
    """One Redis connection: pipelined commands, replies matched in FIFO order.

    :class:`RedisMultiplexer` makes these; tests may drive one with a fake
    transport (``connection_made`` then :meth:`send` and ``data_received``).

    Args:
        loop: the event loop the connection lives on.
        timeout_seconds: fail everything when calls wait and nothing arrives for this long.
        max_pending: calls allowed to wait for a reply at once.
        name: the server, for messages (``"Redis at 127.0.0.1:6379"``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout_seconds: float,
        max_pending: int = DEFAULT_MAX_PENDING,
        name: str = "Redis",
    ) -> None:
        self.loop = loop
        self.closed = False
        """True once the connection failed or was closed; it is never reused."""
        self.keeper: asyncio.Task[None] | None = None
        self._name = name
        self._timeout = timeout_seconds
        self._max_pending = max_pending
        self._transport: asyncio.Transport | None = None
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        # Commands sent during one pass of the loop go out in one write.
        self._outgoing: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_progress = 0.0
        self._lost: asyncio.Future[None] = loop.create_future()
        # Parser state kept between chunks: unparsed bytes, the bytes needed
        # before parsing is worth retrying, open arrays as [items, missing], and
        # the length of a bulk string whose body has not fully arrived.
        self._buffer = bytearray()
        self._need = 0
        self._stack: list[list[Any]] = []
        self._bulk = -1

    @property
    def pending(self) -> int:
        """Calls waiting for a reply, those of cancelled callers included."""
        return len(self._waiters)

    # --- sending --------------------------------------------------------------

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed command (written with the others of this loop pass).

        The future gets its reply or its exception.

        Raises:
            redis.exceptions.ConnectionError: the connection is closed, or
                ``max_pending`` calls are already waiting.
        """
        if self.closed or self._transport is None:
            msg = f"Connection to {self._name} is closed"
            raise RedisConnectionError(msg)
        waiters = self._waiters
        if not waiters:
            now = self.loop.time()
            self._last_progress = now
            if self._timer is None:
                self._timer = self.loop.call_at(now + self._timeout, self._check_timeout)
        elif len(waiters) >= self._max_pending:
            msg = f"{len(waiters)} calls are already waiting for replies from {self._name}"
            raise RedisConnectionError(msg)
        future: asyncio.Future[Any] = self.loop.create_future()
        waiters.append(future)
        outgoing = self._outgoing
        if not outgoing:
            self.loop.call_soon(self._flush)
        outgoing.append(command)
        return future

    def _flush(self) -> None:
        outgoing = self._outgoing
        if not outgoing or self.closed or self._transport is None:
            outgoing.clear()
            return
        self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
        outgoing.clear()

    def _check_timeout(self) -> None:
        self._timer = None
        if self.closed or not self._waiters:
            return
        deadline = self._last_progress + self._timeout
        if self.loop.time() >= deadline:
            msg = f"Timeout reading from {self._name}: no reply within {self._timeout:g}s"
            self.abort(RedisTimeoutError, msg)
        else:
            self._timer = self.loop.call_at(deadline, self._check_timeout)

    # --- closing --------------------------------------------------------------

    def abort(
        self,
        error: type[RedisError] = RedisConnectionError,
        message: str = "Connection closed by client",
    ) -> None:
        """Fail every waiting call with ``error(message)`` and drop the connection."""
        self._fail(error, message)
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Return once the transport has reported the connection lost."""
        await asyncio.shield(self._lost)

    def _fail(self, error: type[RedisError], message: str) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._outgoing.clear()
        waiters, self._waiters = self._waiters, collections.deque()
        for future in waiters:
            if not future.done():
                future.set_exception(error(message))
        self._buffer.clear()
        self._stack.clear()
        self._bulk = -1

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio calls this)."""
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every waiting call (asyncio calls this)."""
        if exc is None:
            message = f"Connection closed by {self._name}"
        else:
            message = f"Connection to {self._name} lost: {exc}"
        self._fail(RedisConnectionError, message)
        if not self._lost.done():
            self._lost.set_result(None)

    def eof_received(self) -> bool:
        """Let the transport close itself on EOF (asyncio calls this)."""
        return False

    def data_received(self, data: bytes) -> None:
        """Parse whatever replies ``data`` completes (asyncio calls this)."""
        if self.closed:
            return
        self._last_progress = self.loop.time()
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return
            view: bytes | bytearray = buffer
        else:
            view = data
        try:
            used = self._parse(view)
        except (ValueError, IndexError) as exc:
            # A malformed reply, or a reply nobody asked for: nothing after it
            # can be matched to its caller any more.
            self.abort(RedisConnectionError, f"Protocol error from {self._name}: {exc}")
            return
        if view is buffer:
            del buffer[:used]
        elif used < len(data):
            buffer += memoryview(data)[used:]

    def _parse(self, buf: bytes | bytearray) -> int:
        """Deliver every reply complete in ``buf``; return how many bytes were used."""
        waiters = self._waiters
        stack = self._stack
        bulk = self._bulk
        end = len(buf)
        pos = 0
        value: Any
        while True:
            if bulk >= 0:
                stop = pos + bulk
                if stop + 2 > end:
                    self._need = bulk + 2
                    break
                value = bytes(buf[pos:stop])
                pos = stop + 2
                bulk = -1
            else:
                newline = buf.find(b"\r\n", pos)
                if newline < 0:
                    self._need = end - pos + 1
                    break
                kind = buf[pos]
                if kind == 36:  # $ bulk string
                    size = int(buf[pos + 1 : newline])
                    pos = newline + 2
                    if size >= 0:
                        bulk = size
                        continue
                    value = None
                elif kind == 58:  # : integer
                    value = int(buf[pos + 1 : newline])
                    pos = newline + 2
                elif kind == 43:  # + simple string
                    value = bytes(buf[pos + 1 : newline])
                    pos = newline + 2
                elif kind == 42:  # * array
                    size = int(buf[pos + 1 : newline])
                    pos = newline + 2
                    if size > 0:
                        stack.append([[], size])
                        continue
                    value = [] if size == 0 else None
                elif kind == 45:  # - error
                    value = error_from_reply(bytes(buf[pos + 1 : newline]))
                    pos = newline + 2
                    if not stack:
                        future = waiters.popleft()
                        if not future.done():
                            future.set_exception(value)
                        continue
                else:
                    msg = f"unknown reply type {bytes([kind])!r}"
                    raise ValueError(msg)
            # A value is complete: it fills an open array, or is a whole reply.
            while stack:
                top = stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                stack.pop()
                value = top[0]
            else:
                future = waiters.popleft()
                if not future.done():
                    future.set_result(value)
        self._bulk = bulk
        return pos


async def _close_with_loop(protocol: RespProtocol) -> None:
    """Close ``protocol``'s connection when its loop is shut down (tasks cancelled)."""
    try:
        await protocol.wait_closed()
    finally:
        if not protocol.closed:
            protocol.abort(RedisConnectionError, "The event loop is shutting down")


def _consume_exception(task: asyncio.Task[RespProtocol]) -> None:
    # Callers may all have gone; the failure must not be reported as never retrieved.
    if not task.cancelled():
        task.exception()


class RedisMultiplexer:
    """One pipelined Redis connection per event loop, shared by every caller.

    Connects on the first call. Construct it with :meth:`for_client` to reuse the
    kernel client's URL, or with keyword arguments.

    Args:
        socket_timeout: seconds allowed for connecting (handshake included), and
            for Redis to send something while calls wait for replies.
        host: server host (ignored when ``path`` is given).
        port: server port.
        path: unix socket path, instead of host and port.
        db: database number; ``SELECT`` is sent on connect when non-zero.
        username: ACL user for ``AUTH`` (only used with ``password``).
        password: ``AUTH`` on connect when not None.
        ssl_context: TLS context; None for a plain connection.
        server_hostname: name checked against the server's certificate
            (default: ``host``).
        client_name: sent with ``CLIENT SETNAME`` on connect when given.
        max_pending: calls allowed to wait for replies at once; more fail with
            ``ConnectionError`` instead of growing memory while Redis hangs.

    Raises:
        ValueError: ``socket_timeout`` or ``max_pending`` is not positive.
    """

    def __init__(
        self,
        *,
        socket_timeout: float,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        client_name: str | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not socket_timeout > 0:
            msg = f"socket_timeout: expected seconds > 0, got {socket_timeout!r}"
            raise ValueError(msg)
        if max_pending < 1:
            msg = f"max_pending: expected at least 1, got {max_pending!r}"
            raise ValueError(msg)
        self._timeout = float(socket_timeout)
        self._host = host
        self._port = port
        self._path = path
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._max_pending = max_pending
        self._name = f"Redis at {path}" if path is not None else f"Redis at {host}:{port}"
        handshake: list[tuple[CommandArg, ...]] = []
        if password is not None:
            handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            handshake.append(("SELECT", db))
        if client_name:
            handshake.append(("CLIENT", "SETNAME", client_name))
        self._handshake = [pack_command(command) for command in handshake]
        self._protocol: RespProtocol | None = None
        self._connecting: asyncio.Task[RespProtocol] | None = None

    @classmethod
    def for_client(
        cls, client: Redis, *, socket_timeout: float, max_pending: int = DEFAULT_MAX_PENDING
    ) -> RedisMultiplexer:
        """A multiplexer to the server, database and user of a ``redis.asyncio`` client.

        Reads the client pool's parsed URL: host and port or unix socket path,
        ``db``, ``username``/``password``, ``client_name``, and TLS for a
        ``rediss://`` URL (``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_ca_path``,
        ``ssl_ca_data``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``,
        ``ssl_check_hostname``, ``ssl_min_version``, ``ssl_ciphers``). Certificate
        files are read here, so call it at start-up rather than per request.

        Args:
            client: the kernel's ``redis.asyncio`` client.
            socket_timeout: as in the constructor.
            max_pending: as in the constructor.

        Raises:
            ValueError: the client uses a credential provider, which is not supported.
        """
        pool = client.connection_pool
        kwargs: Mapping[str, Any] = pool.connection_kwargs
        connection_class = pool.connection_class
        if kwargs.get("credential_provider") is not None:
            msg = "RedisMultiplexer.for_client: a credential_provider is not supported"
            raise ValueError(msg)
        host = str(kwargs.get("host") or "localhost")
        path: str | None = None
        if issubclass(connection_class, UnixDomainSocketConnection):
            path = str(kwargs["path"])
        context = _ssl_context(kwargs) if issubclass(connection_class, SSLConnection) else None
        return cls(
            socket_timeout=socket_timeout,
            host=host,
            port=int(kwargs.get("port") or 6379),
            path=path,
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=context,
            server_hostname=host if context is not None else None,
            client_name=kwargs.get("client_name"),
            max_pending=max_pending,
        )

    def __repr__(self) -> str:
        return f"<RedisMultiplexer {self._name}>"

    async def execute(self, *args: CommandArg) -> Any:
        """Run one command; its reply as redis-py gives it with ``decode_responses=False``.

        Bulk and simple strings are bytes, integers int, nil None, arrays lists
        (error elements inside an array are exception instances).

        Raises:
            ValueError: a blocking or connection-state command (module docstring).
            redis.exceptions.ResponseError: an error reply (subclasses such as
                ``NoScriptError``, ``ReadOnlyError``, ``NoPermissionError``).
            redis.exceptions.ConnectionError: could not connect, the connection
                was lost, or too many calls are waiting (also ``AuthenticationError``,
                ``BusyLoadingError``).
            redis.exceptions.TimeoutError: no reply within ``socket_timeout``.
        """
        check_command(args)
        return await self._send(pack_command(args))

    async def evalsha(
        self,
        script: LuaScript,
        keys: Sequence[str | bytes] = (),
        args: Sequence[CommandArg] = (),
    ) -> Any:
        """``EVALSHA`` of ``script``; after ``NOSCRIPT``, ``SCRIPT LOAD`` it and try again.

        Up to :data:`~app_kernel._redis.lua.NOSCRIPT_ATTEMPTS` tries.

        Raises:
            as :meth:`execute`.
        """
        return await self.evalsha_packed(
            script, pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        )

    async def evalsha_packed(self, script: LuaScript, command: bytes) -> Any:
        """:meth:`evalsha` of a command the caller packed itself.

        ``command`` must be ``EVALSHA <script.sha> ...`` in RESP2 (see
        :func:`~app_kernel._redis.resp.pack_args`): callers on a hot path pack
        the parts that never change once.

        Raises:
            as :meth:`execute`.
        """
        for attempt in range(1, NOSCRIPT_ATTEMPTS + 1):
            try:
                return await self._send(command)
            except NoScriptError:
                # The script cache was flushed (restart, SCRIPT FLUSH, failover).
                if attempt == NOSCRIPT_ATTEMPTS:
                    raise
                await self._send(pack_command(("SCRIPT", "LOAD", script.text)))
        raise AssertionError  # unreachable: the loop returns or raises

    async def aclose(self) -> None:
        """Close the connection and fail the calls waiting on it; idempotent.

        A later call connects again.
        """
        loop = asyncio.get_running_loop()
        connecting = self._connecting
        if connecting is not None and connecting.get_loop() is loop and not connecting.done():
            # Let the attempt finish (bounded by socket_timeout), then close what it made.
            with contextlib.suppress(Exception):
                await asyncio.shield(connecting)
        self._connecting = None
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        if protocol.loop is not loop:
            _discard(protocol)
            return
        if not protocol.closed:
            protocol.abort(RedisConnectionError, "Connection closed by client")
        await protocol.wait_closed()

    # --- internals ------------------------------------------------------------

    def _send(self, command: bytes) -> Awaitable[Any]:
        protocol = self._protocol
        if (
            protocol is not None
            and not protocol.closed
            and protocol.loop is asyncio.get_running_loop()
        ):
            return protocol.send(command)
        return self._connect_and_send(command)

    async def _connect_and_send(self, command: bytes) -> Any:
        protocol = await self._connect()
        return await protocol.send(command)

    async def _connect(self) -> RespProtocol:
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        if protocol is not None:
            if protocol.loop is not loop:
                self._protocol = None
                _discard(protocol)
            elif not protocol.closed:
                return protocol
        task = self._connecting
        if task is None or task.done() or task.get_loop() is not loop:
            # One attempt at a time: concurrent first callers all wait for it.
            task = loop.create_task(self._open(loop))
            task.add_done_callback(_consume_exception)
            self._connecting = task
        return await asyncio.shield(task)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> RespProtocol:
        def factory() -> RespProtocol:
            return RespProtocol(
                loop, timeout_seconds=self._timeout, max_pending=self._max_pending, name=self._name
            )

        try:
            async with asyncio.timeout(self._timeout):
                if self._path is not None:
                    _, protocol = await loop.create_unix_connection(
                        factory,
                        self._path,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname if self._ssl else None,
                    )
                else:
                    _, protocol = await loop.create_connection(
                        factory,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname if self._ssl else None,
                    )
        except TimeoutError as exc:
            msg = f"Timeout connecting to {self._name} after {self._timeout:g}s"
            raise RedisTimeoutError(msg) from exc
        except OSError as exc:
            msg = f"Error connecting to {self._name}: {exc}"
            raise RedisConnectionError(msg) from exc
        protocol.keeper = loop.create_task(_close_with_loop(protocol))
        try:
            if self._handshake:
                futures = [protocol.send(command) for command in self._handshake]
                results = await asyncio.gather(*futures, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
        except BaseException:
            protocol.abort(RedisConnectionError, "Connection setup failed")
            raise
        self._protocol = protocol
        return protocol


def _discard(protocol: RespProtocol) -> None:
    """Drop a connection of another event loop without awaiting anything.

    A closed loop has already closed it (:func:`_close_with_loop` ran when its
    tasks were cancelled); an open one is asked to, thread-safely.
    """
    loop = protocol.loop
    if not protocol.closed and not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed in the meantime
            loop.call_soon_threadsafe(
                protocol.abort, RedisConnectionError, "Connection used from another event loop"
            )


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _to_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y")
    return bool(value)


def _ssl_context(kwargs: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py's ``SSLConnection`` would build from the same arguments."""
    reqs: Any = kwargs.get("ssl_cert_reqs", "required")
    if reqs is None:
        reqs = ssl.CERT_NONE
    elif isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            msg = f"ssl_cert_reqs: expected none, optional or required, got {reqs!r}"
            raise ValueError(msg)
        reqs = _CERT_REQS[reqs.lower()]
    verify_mode = ssl.VerifyMode(reqs)
    context = ssl.create_default_context()
    context.check_hostname = verify_mode != ssl.CERT_NONE and _to_bool(
        kwargs.get("ssl_check_hostname", True)
    )
    context.verify_mode = verify_mode
    for flag in kwargs.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in kwargs.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    certfile = kwargs.get("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, kwargs.get("ssl_keyfile"), kwargs.get("ssl_password"))
    ca_certs, ca_path, ca_data = (
        kwargs.get("ssl_ca_certs"),
        kwargs.get("ssl_ca_path"),
        kwargs.get("ssl_ca_data"),
    )
    if ca_certs or ca_path or ca_data:
        context.load_verify_locations(ca_certs, ca_path, ca_data)
    if kwargs.get("ssl_min_version") is not None:
        context.minimum_version = kwargs["ssl_min_version"]
    if kwargs.get("ssl_ciphers") is not None:
        context.set_ciphers(kwargs["ssl_ciphers"])
    return context
