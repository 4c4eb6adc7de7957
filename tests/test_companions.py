"""The application's side of a payload route: a key and its companion written and cancelled together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from expiryd.companions import Companions
from expiryd.devtools.localcluster import LocalCluster

T = TypeVar("T")


def with_cluster_client(cluster: LocalCluster, use: Callable[[RedisCluster], Awaitable[T]]) -> T:
    async def scenario() -> T:
        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in cluster.nodes])
        try:
            return await use(client)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def tag() -> str:
    return uuid.uuid4().hex[:12]


def test_schedule_writes_key_and_companion_with_their_ttls(shared_cluster: LocalCluster) -> None:
    key = f"order:{{{tag()}}}"

    async def use(client: RedisCluster) -> tuple[Any, ...]:
        await Companions(client=client, keep_for=100).schedule(key, b'{"amount": 12}', ttl=30)
        companion = f"{key}:payload"
        return (
            await client.get(key),
            await client.get(companion),
            await client.pttl(key),
            await client.pttl(companion),
        )

    value, payload, key_ttl, companion_ttl = with_cluster_client(shared_cluster, use)
    assert value == b"1"
    assert payload == b'{"amount": 12}'
    assert 29_000 < key_ttl <= 30_000
    assert 129_000 < companion_ttl <= 130_000


def calls(info: dict[str, Any], command: str) -> int:
    return int(info.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_schedule_is_one_atomic_command_on_the_key_slot(shared_cluster: LocalCluster) -> None:
    key = f"order:{{{tag()}}}"
    owner = shared_cluster.node_for_key(key).client()
    before = owner.info("commandstats")

    async def use(client: RedisCluster) -> None:
        await Companions(client=client).schedule(key, "x", ttl=5)

    with_cluster_client(shared_cluster, use)
    after = owner.info("commandstats")
    owner.close()
    assert calls(after, "eval") == calls(before, "eval") + 1
    assert calls(after, "set") == calls(before, "set") + 2  # inside the script
    assert key_slot(key.encode()) == key_slot(f"{key}:payload".encode())


def test_a_key_whose_companion_is_in_another_slot_is_refused() -> None:
    companions = Companions(client=None)
    with pytest.raises(ValueError, match="hash tag"):
        asyncio.run(companions.schedule("order:42", b"x", ttl=5))
    with pytest.raises(ValueError, match="hash slot"):
        asyncio.run(companions.cancel(b"order:42"))


def test_a_template_without_key_is_refused() -> None:
    with pytest.raises(ValueError, match="no \\{key\\}"):
        Companions(client=None, template="payload")


def test_cancel_deletes_both_and_says_the_key_had_not_fired(shared_cluster: LocalCluster) -> None:
    key = f"order:{{{tag()}}}"

    async def use(client: RedisCluster) -> tuple[bool, int]:
        companions = Companions(client=client)
        await companions.schedule(key, b"data", ttl=30)
        cancelled = await companions.cancel(key)
        return cancelled, await client.exists(key, f"{key}:payload")

    assert with_cluster_client(shared_cluster, use) == (True, 0)


def test_cancel_after_the_key_expired_answers_false_and_still_deletes_the_companion(
    shared_cluster: LocalCluster,
) -> None:
    key = f"order:{{{tag()}}}"

    async def use(client: RedisCluster) -> tuple[bool, int]:
        companions = Companions(client=client)
        await companions.schedule(key, b"data", ttl=0.05)
        await asyncio.sleep(0.1)
        cancelled = await companions.cancel(key)
        return cancelled, await client.exists(f"{key}:payload")

    assert with_cluster_client(shared_cluster, use) == (False, 0)


def test_binary_keys_and_payloads_are_written_as_given(shared_cluster: LocalCluster) -> None:
    key = b"bin:{\xff\x00" + tag().encode() + b"}"
    payload = b"\x80\xfe\x00"

    async def use(client: RedisCluster) -> Any:
        await Companions(client=client).schedule(key, payload, ttl=30)
        return await client.get(key + b":payload")

    assert with_cluster_client(shared_cluster, use) == payload


def test_a_plain_redis_client_works(shared_cluster: LocalCluster) -> None:
    key = f"order:{{{tag()}}}"
    owner = shared_cluster.node_for_key(key)

    async def scenario() -> tuple[Any, bool]:
        client = aioredis.Redis(host="127.0.0.1", port=owner.port)
        try:
            companions = Companions(client=client, template="payload:{key}")
            await companions.schedule(key, b"p", ttl=30)
            payload = await client.get(f"payload:{key}")
            return payload, await companions.cancel(key)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == (b"p", True)
