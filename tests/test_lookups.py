"""Due-time lookups as raw RESP, on a real cluster: each reply in order, errors per key, a lost connection."""

from __future__ import annotations

import asyncio
import time
import uuid

import hiredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from expiryd.connections import NodeAddress, RedisOptions
from expiryd.lookups import NodeLookups

from .harness import keys_on_every_primary


def test_each_key_gets_its_due_time_no_ttl_or_gone_in_the_order_asked(shared_cluster):
    prefix = uuid.uuid4().hex[:8]
    node, keys = next(iter(keys_on_every_primary(shared_cluster, prefix, per_node=3).items()))
    due_ms = int(time.time() * 1000) + 600_000
    client = shared_cluster.client()
    client.set(keys[0], b"v", pxat=due_ms)
    client.set(keys[1], b"v")

    async def look_up() -> list[object]:
        lookups = NodeLookups(options=RedisOptions())
        try:
            return await lookups.pexpiretimes(NodeAddress.parse(node), [keys[2], keys[0], keys[1]])
        finally:
            await lookups.aclose()

    assert asyncio.run(look_up()) == [-2, due_ms, -1]


def test_a_key_of_another_node_gets_that_node_s_error_and_the_others_their_replies(shared_cluster):
    prefix = uuid.uuid4().hex[:8]
    by_node = keys_on_every_primary(shared_cluster, prefix, per_node=1)
    (node, (own,)), (_, (other,)) = list(by_node.items())[:2]

    async def look_up() -> list[object]:
        lookups = NodeLookups(options=RedisOptions())
        try:
            return await lookups.pexpiretimes(NodeAddress.parse(node), [own, other, own])
        finally:
            await lookups.aclose()

    first, moved, last = asyncio.run(look_up())
    assert first == last == -2
    assert isinstance(moved, hiredis.ReplyError) and str(moved).startswith("MOVED")


def test_a_connection_killed_by_the_node_raises_and_the_next_call_connects_again(shared_cluster):
    prefix = uuid.uuid4().hex[:8]
    node, (key,) = next(iter(keys_on_every_primary(shared_cluster, prefix, per_node=1).items()))
    address = NodeAddress.parse(node)

    async def scenario() -> list[object]:
        lookups = NodeLookups(options=RedisOptions())
        try:
            await lookups.pexpiretimes(address, [key])
            shared_cluster.node(node).client().client_kill_filter(_type="normal", skipme=True)
            with pytest.raises(RedisConnectionError):
                await lookups.pexpiretimes(address, [key])
            return await lookups.pexpiretimes(address, [key])
        finally:
            await lookups.aclose()

    assert asyncio.run(scenario()) == [-2]
