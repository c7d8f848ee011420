"""A pipelined Redis client for the job store's hot path: the Lua scripts every job runs.

redis-py's asyncio client spends ~200 us of Python per command on a 2-core box (a pooled connection
taken and returned under a lock and a condition, a Task per send for its socket timeout, packing),
against ~30 us for the loopback round trip itself, and a job runs three or four scripts, two of them
on its latency's critical path. This client keeps one connection per process, sends everything issued
in one event-loop iteration with one write, and hands replies to callers in order: RESP replies come
back in the order the commands went out, so a deque of futures is all the bookkeeping there is.

Errors are redis-py's classes (ConnectionError, TimeoutError, ResponseError, NoScriptError), so the
callers' handling (UNAVAILABLE while Redis is down, NOSCRIPT after a restart) does not change. A lost
connection fails what was in flight; the next command connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis import exceptions as rx

Arg = bytes | str | int | float
log = logging.getLogger(__name__)


def _error(reply: hiredis.ReplyError) -> rx.RedisError:
    msg = str(reply)
    if msg.startswith("LOADING"):
        # A restarted Redis replaying its append-only file: not there yet, as redis-py's own parser says
        # (BusyLoadingError is a ConnectionError), so callers answer UNAVAILABLE and retry, not INTERNAL.
        return rx.BusyLoadingError(msg)
    return rx.NoScriptError(msg) if msg.startswith("NOSCRIPT") else rx.ResponseError(msg)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes, fut: asyncio.Future[Any]) -> None:
        if not self.out:  # the first command of this loop iteration schedules the one write for all
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(packed)
        self.waiters.append(fut)

    def _flush(self) -> None:
        if self.transport is not None and self.out and self.lost is None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            fut = self.waiters.popleft()
            if fut.done():  # its caller was cancelled or timed out; the reply still keeps the order
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(_error(reply))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = self.lost or exc or rx.ConnectionError("Redis closed the connection")
        err = rx.ConnectionError(f"Redis connection lost: {self.lost}")
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(err)

    def close(self) -> None:
        # Marked lost now: the transport reports the loss only on a later loop iteration, and no new
        # command may queue behind a connection that is going away.
        self.lost = self.lost or rx.ConnectionError("connection closed by the client")
        if self.transport is not None:
            self.transport.abort()


class Subscription(asyncio.Protocol):
    """A connection in subscribe mode: every `message` push goes to `on_message(data)`; `closed`
    fails with ConnectionError when the connection goes (pub/sub loses what is sent meanwhile)."""

    def __init__(self, on_message: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        for fut in (self.ready, self.closed):
            # Nobody may be awaiting them when the connection goes (e.g. a subscriber shutting down):
            # mark the error seen, or asyncio logs "Future exception was never retrieved" at exit.
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):  # AUTH refused, or SUBSCRIBE not allowed
                if not self.ready.done():
                    self.ready.set_exception(_error(reply))
            elif isinstance(reply, list) and reply and reply[0] == b"message":
                try:
                    self.on_message(reply[2])
                except Exception:  # one bad message must not end the subscription
                    log.exception("subscription: message handler failed")
            elif isinstance(reply, list) and reply and reply[0] == b"subscribe" and not self.ready.done():
                self.ready.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        err = rx.ConnectionError(f"Redis subscription lost: {exc or 'closed by Redis'}")
        for fut in (self.ready, self.closed):
            if not fut.done():
                fut.set_exception(err)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def pack(args: Sequence[Arg]) -> bytes:
    return hiredis.pack_command(tuple(args))


class FastRedis:
    """One pipelined connection to the Redis at `url` (redis:// or unix://, with password and db)."""

    def __init__(self, url: str, timeout_s: float = 5.0, connect_timeout_s: float = 2.0) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {u.scheme!r} (redis:// or unix://)")
        self.url, self.timeout_s, self.connect_timeout_s = url, timeout_s, connect_timeout_s
        self._unix = u.path if u.scheme == "unix" else ""
        self._host, self._port = u.hostname or "localhost", u.port or 6379
        self._password = unquote(u.password) if u.password else ""
        self._username = unquote(u.username) if u.username else ""
        db = u.path.lstrip("/") if u.scheme == "redis" else dict(
            p.split("=", 1) for p in u.query.split("&") if "=" in p).get("db", "0")
        self._db = int(db or 0)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    def _usable(self, conn: _Connection | None, loop: asyncio.AbstractEventLoop) -> bool:
        # A connection belongs to the loop that made it (tests run several loops over one client).
        return conn is not None and conn.lost is None and conn.loop is loop

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._usable(self._conn, loop):
            return self._conn  # type: ignore[return-value]
        if self._connecting is None or self._conn is None or self._conn.loop is not loop:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._usable(self._conn, loop):
                return self._conn  # type: ignore[return-value]
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    conn = await self._open(_Connection)
                    setup = self._auth() + ([("SELECT", self._db)] if self._db else [])
                    for cmd in setup:
                        fut = loop.create_future()
                        conn.send(pack(cmd), fut)
                        await fut
            except (OSError, TimeoutError) as e:
                raise rx.ConnectionError(f"cannot connect to Redis at {self.url}: {e}") from e
            self._conn = conn
            return conn

    async def execute(self, *args: Arg) -> Any:
        conn = await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.send(pack(args), fut)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fut
        except TimeoutError:
            # A silent server (not a closed one): start over on a fresh connection next time.
            conn.close()
            raise rx.TimeoutError(f"Redis did not answer {args[0]!r} within {self.timeout_s:g}s") from None

    async def _open(self, factory: Callable[[], asyncio.Protocol]) -> Any:
        loop = asyncio.get_running_loop()
        if self._unix:
            return (await loop.create_unix_connection(factory, self._unix))[1]
        return (await loop.create_connection(factory, self._host, self._port))[1]

    def _auth(self) -> list[tuple[Arg, ...]]:
        if not self._password:
            return []
        return [("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)]

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None]) -> Subscription:
        """A new connection subscribed to `channel` (confirmed when this returns)."""
        sub: Subscription | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                sub = await self._open(lambda: Subscription(on_message))
                assert sub is not None and sub.transport is not None
                sub.transport.write(b"".join(pack(c) for c in [*self._auth(), ("SUBSCRIBE", channel)]))
                await sub.ready
        except BaseException as e:
            if sub is not None:
                sub.close()
            if isinstance(e, (OSError, TimeoutError)):
                raise rx.ConnectionError(f"cannot subscribe at {self.url}: {e}") from e
            raise
        return sub

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class FastScript:
    """A Lua script run by EVALSHA on a FastRedis, loaded again when Redis lost it (a restart);
    called like redis-py's Script: `await script(keys=[...], args=[...])`."""

    def __init__(self, client: FastRedis, text: str) -> None:
        self.client, self.text = client, text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except rx.NoScriptError:
            with contextlib.suppress(rx.ResponseError):  # a concurrent caller may have loaded it already
                await self.client.execute("SCRIPT", "LOAD", self.text)
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
