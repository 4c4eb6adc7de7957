"""The ``stream`` handler: ``XADD`` one entry per event to a Redis stream.

It is the durable hand-off for consumers that want their own consumer groups.
Each entry has the fields :meth:`expiryd.events.Event.to_fields` writes:
``key`` (the raw key bytes), ``kind`` (``expired`` or ``hexpired``), ``node``,
``term``, ``replica``, ``received_at``, ``due_at`` when the key's due time was
known and, when the route fetches one and it existed, ``payload``. The stream
is trimmed with ``MAXLEN ~``::

    handler = StreamHandler(client=cluster, name="expired:orders", maxlen=1_000_000, owns_client=False)
    await handler.handle(events)        # one write and one read for the whole batch

**Why not redis-py's pipeline.** A stream key lives in one hash slot, on one
node, so a batch has one destination. The cluster pipeline still looks up
the slot, the node and the command's policies for every command, and packs
each one in pure Python: at 100 entries per batch that was most of the
leader's time. Here a batch is packed with hiredis into one buffer, written
on one connection to the slot's owner (a connection of redis-py's own, so
TLS, AUTH and the ACL user are exactly the client's) and its replies are read
back in order. Each lane of the route writes on a connection of its own, so
a route with ``concurrency: N`` has up to N batches in flight.

**Guarantees.** An event is done only when Redis replied with its entry id.
``MOVED`` (a failover, a resharding) and ``ASK`` (a slot being migrated) are
followed for the entries they refused, within the same call, so entries Redis
already took are not written twice. A lost connection, a timeout,
``TRYAGAIN``, ``CLUSTERDOWN``, ``LOADING`` and ``READONLY`` are retried by the
route (the cluster's topology is re-read first); Redis refusing a command (a
stream key of another type, a missing ACL permission) is a
:class:`PermanentFailure`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from ..connections import describe_error
from ..events import Event
from .base import PermanentFailure, RetryLater

__all__ = ["StreamHandler"]

# Errors in a reply that say "not now" rather than "never".
_TRANSIENT = (TryAgainError, ClusterDownError, ReadOnlyError)
# How many redirections one call follows before it gives up and lets the route retry.
_MAX_REDIRECTS = 5
_ASKING = hiredis.pack_command(("ASKING",))


class StreamHandler:
    def __init__(self, *, client: Any, name: str, maxlen: int, owns_client: bool) -> None:
        self._client = client
        self._name = name
        self._owns_client = owns_client
        self._encoded_name = name.encode("utf-8")
        self._prefix: tuple[bytes | str | int, ...] = ("XADD", self._encoded_name, "MAXLEN", "~", maxlen, "*")
        self._cluster = isinstance(client, RedisCluster)
        self._slot = key_slot(self._encoded_name)
        # Set after a connection failed: the slot's owner may have changed.
        self._refresh_topology = False

    async def handle(self, events: list[Event]) -> None:
        commands = [self._pack(event) for event in events]
        if self._cluster:
            await self._write_to_cluster(commands)
        else:
            await self._write(commands, self._standalone_connection)

    def _pack(self, event: Event) -> bytes:
        args: list[bytes | str | int] = [*self._prefix]
        for name, value in event.to_fields().items():
            args.append(name)
            args.append(value)
        return hiredis.pack_command(tuple(args))  # type: ignore[arg-type]  # the stub types a 1-tuple

    async def _write_to_cluster(self, commands: list[bytes]) -> None:
        cluster: RedisCluster = self._client
        await cluster.initialize()  # returns at once once the client knows the cluster
        if self._refresh_topology:
            self._refresh_topology = False
            await cluster.nodes_manager.initialize()
        node: ClusterNode = cluster.nodes_manager.get_node_from_slot(self._slot)
        asking = False
        for _ in range(_MAX_REDIRECTS + 1):
            redirect = await self._write(commands, _node_connection(node), asking=asking)
            if redirect is None:
                return
            done, error = redirect
            commands = commands[done:]
            asking = not isinstance(error, MovedError)
            if not asking:
                # The slot has a new owner for good: tell the client, so every later batch goes there.
                await cluster.nodes_manager.move_slot(error)
            found = cluster.get_node(host=error.host, port=error.port)
            node = (
                found
                if found is not None
                else ClusterNode(error.host, error.port, **cluster.nodes_manager.connection_kwargs)
            )
        raise RetryLater(f"stream {self._name!r}: still redirected after {_MAX_REDIRECTS} redirections")

    async def _write(
        self,
        commands: list[bytes],
        connect: Callable[[], Awaitable[tuple[Any, Callable[[], Any]]]],
        *,
        asking: bool = False,
    ) -> tuple[int, AskError] | None:
        """Send every command in one write and read every reply; a redirection returns (entries done, error)."""
        connection, release = await connect()
        try:
            replies = await self._exchange(connection, commands, asking=asking)
        except BaseException:
            # A half-read reply stream is no use to the next caller, and the slot's owner may have changed.
            await connection.disconnect(nowait=True)
            self._refresh_topology = True
            raise
        finally:
            await release()
        for index, reply in enumerate(replies):
            if not isinstance(reply, ResponseError):
                continue
            if isinstance(reply, AskError):  # MovedError included
                return index, reply
            if isinstance(reply, _TRANSIENT):
                raise RetryLater(describe_error(reply))
            raise PermanentFailure(describe_error(reply))
        return None

    async def _exchange(self, connection: Any, commands: list[bytes], *, asking: bool) -> list[Any]:
        count = len(commands)
        if asking:
            # ASKING lets only the next command into a slot being imported.
            commands = [part for command in commands for part in (_ASKING, command)]
        await connection.send_packed_command(b"".join(commands), check_health=False)
        parser = getattr(connection, "_parser", None)
        if isinstance(parser, _AsyncHiredisParser) and parser._reader is not None:
            replies = await _read_with_hiredis(parser, len(commands), timeout=connection.socket_timeout)
        else:
            replies = await _read_one_by_one(connection, len(commands))
        if asking:
            replies = replies[1::2]
        assert len(replies) == count
        return replies

    async def _standalone_connection(self) -> tuple[Any, Callable[[], Awaitable[None]]]:
        pool = self._client.connection_pool
        connection = await pool.get_connection()

        async def release() -> None:
            await pool.release(connection)

        return connection, release

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


async def _read_with_hiredis(parser: _AsyncHiredisParser, count: int, *, timeout: float | None) -> list[Any]:
    """``count`` replies, error replies as exception objects, with one timeout for all of them.

    redis-py's own ``read_response`` costs a timeout scope and two coroutine
    calls per reply, most of a stream write's time at a hundred replies a batch;
    the hiredis reader it feeds already holds them all, parsed.
    """
    reader: Any = parser._reader
    replies: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(replies) < count:
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA:
                await parser.read_from_socket()
                continue
            if isinstance(reply, ConnectionError):
                raise reply
            replies.append(reply)
    return replies


async def _read_one_by_one(connection: Any, count: int) -> list[Any]:
    """The same through redis-py's public API, for a connection that does not parse with hiredis."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:  # an error reply; the replies after it still follow
            replies.append(error)
    return replies


def _node_connection(node: ClusterNode) -> Callable[[], Awaitable[tuple[Any, Callable[[], Awaitable[None]]]]]:
    async def connect() -> tuple[Any, Callable[[], Awaitable[None]]]:
        connection = node.acquire_connection()

        async def release() -> None:
            node.release(connection)

        return connection, release

    return connect
