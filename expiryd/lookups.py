"""Due-time lookups: ``PEXPIRETIME`` for many keys on one node, as raw pipelined RESP.

Every replica looks up each routed key's due time when its TTL is set, and
the leader touches each key when it is due, with the same command. Through a
redis-py pipeline each key costs about 10 us of this process's CPU (a command
object, its packing, a reply parsed into a response callback); packed with
hiredis and read back as one stream of integers it costs under 2 us, which is
what lets a replica learn a burst of TTL writes as fast as Redis takes them::

    lookups = NodeLookups(options=options)
    due = await lookups.pexpiretimes(node, [b"order:42", b"order:43"])   # [1764000000250, -2]
    await lookups.aclose()

A reply is the key's due time in ms, -1 (no TTL) or -2 (no key), or the error
the node gave for that key (a :class:`hiredis.ReplyError`: MOVED while its slot
migrates). A connection that fails or times out is closed and the error raised
as redis-py's, so callers handle it as any other Redis failure; the next call
connects afresh. Calls on one node are served one at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connections import NodeAddress, RedisOptions, set_keepalive, tls_context

__all__ = ["NodeLookups"]

_READ_SIZE = 1 << 18


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()
        self.lock = asyncio.Lock()

    async def replies(self, count: int) -> list[Any]:
        found: list[Any] = []
        parser, reader = self.parser, self.reader
        while len(found) < count:
            while (reply := parser.gets()) is not False:
                found.append(reply)
            if len(found) >= count:
                break
            data = await reader.read(_READ_SIZE)
            if not data:
                raise RedisConnectionError("the node closed the connection")
            parser.feed(data)
        return found

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self.writer.wait_closed()


class NodeLookups:
    """One raw connection per node, opened on first use, for ``PEXPIRETIME`` in bulk."""

    def __init__(self, *, options: RedisOptions) -> None:
        self._options = options
        self._tls = tls_context(options.tls) if options.tls is not None else None
        self._connections: dict[NodeAddress, _Connection] = {}
        self._opening: dict[NodeAddress, asyncio.Lock] = {}

    async def pexpiretimes(self, node: NodeAddress, keys: list[bytes]) -> list[Any]:
        """Each key's due time in ms (-1 no TTL, -2 no key), or the node's error for it."""
        connection = await self._connection(node)
        async with connection.lock:
            try:
                connection.writer.write(b"".join([_PEXPIRETIME % (len(key), key) for key in keys]))
                return await asyncio.wait_for(connection.replies(len(keys)), self._options.command_timeout)
            except BaseException as error:
                # Replies may be left unread on it (a timeout, a cancellation): it serves no later call.
                self._forget(node, connection)
                if isinstance(error, TimeoutError):
                    raise RedisTimeoutError(f"no answer from {node} in {self._options.command_timeout} s") from None
                if isinstance(error, (OSError, hiredis.ProtocolError)):
                    raise RedisConnectionError(f"{node}: {error}") from None
                raise

    async def open(self, node: NodeAddress) -> None:
        """Connect to ``node`` now, rather than at its first lookup."""
        await self._connection(node)

    def _forget(self, node: NodeAddress, connection: _Connection) -> None:
        if self._connections.get(node) is connection:
            del self._connections[node]
        connection.writer.close()

    async def drop(self, node: NodeAddress) -> None:
        connection = self._connections.pop(node, None)
        if connection is not None:
            await connection.close()

    async def aclose(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(connection.close() for connection in connections), return_exceptions=True)

    async def _connection(self, node: NodeAddress) -> _Connection:
        connection = self._connections.get(node)
        if connection is not None:
            return connection
        async with self._opening.setdefault(node, asyncio.Lock()):
            connection = self._connections.get(node)
            if connection is None:
                connection = self._connections[node] = await self._connect(node)
            return connection

    async def _connect(self, node: NodeAddress) -> _Connection:
        options = self._options
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(node.host, node.port, ssl=self._tls), options.connect_timeout
            )
        except (OSError, TimeoutError) as error:
            raise RedisConnectionError(f"cannot connect to {node}: {error or type(error).__name__}") from None
        connection = _Connection(reader, writer)
        set_keepalive(writer.get_extra_info("socket"), options.keepalive)
        if options.password is not None:
            credentials = [options.username] if options.username else []
            writer.write(hiredis.pack_command(("AUTH", *credentials, options.password)))  # type: ignore[arg-type]
            try:
                (reply,) = await asyncio.wait_for(connection.replies(1), options.connect_timeout)
            except (OSError, TimeoutError, RedisConnectionError) as error:
                await connection.close()
                raise RedisConnectionError(f"cannot authenticate to {node}: {error}") from None
            if isinstance(reply, hiredis.ReplyError):
                await connection.close()
                # The server's words name the failure (WRONGPASS ...); the password is not in them.
                raise ResponseError(f"AUTH refused by {node}: {reply}")
        return connection


_PEXPIRETIME = b"*2\r\n$11\r\nPEXPIRETIME\r\n$%d\r\n%s\r\n"
