"""Payload companions on a real cluster: reads bounded per event and per call, oversized ones set aside."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from expiryd.devtools.localcluster import LocalCluster
from expiryd.payload import SET_ASIDE_PREFIX, Oversized, PayloadKeys


def with_payloads(cluster: LocalCluster, scenario, **bounds: int) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port) as client:
            await scenario(PayloadKeys(template="{key}:payload", client=client, **bounds), client)

    asyncio.run(main())


def test_a_fetch_stops_before_the_payloads_pass_the_batch_bound(shared_cluster):
    prefix = uuid.uuid4().hex

    async def scenario(payloads: PayloadKeys, client: RedisCluster) -> None:
        keys = [f"{prefix}:{n}".encode() for n in range(5)]
        for key in keys:
            await client.set(payloads.key_for(key), b"x" * 400)
        assert await payloads.fetch(keys) == [b"x" * 400] * 2
        assert await payloads.fetch(keys, whole=True) == [b"x" * 400] * 5

    with_payloads(shared_cluster, scenario, max_bytes=1000, batch_bytes=1000)


def test_a_fetch_reads_no_oversized_payload_and_says_how_long_it_is(shared_cluster):
    prefix = uuid.uuid4().hex

    async def scenario(payloads: PayloadKeys, client: RedisCluster) -> None:
        small, large, missing = (f"{prefix}:{name}".encode() for name in ("small", "large", "missing"))
        await client.set(payloads.key_for(small), b"s")
        await client.set(payloads.key_for(large), b"L" * 2_000_000)
        assert await payloads.fetch([small, large, missing]) == [b"s", Oversized(2_000_000), None]

    with_payloads(shared_cluster, scenario, max_bytes=1_000_000, batch_bytes=4_000_000)


def test_a_companion_set_aside_keeps_its_slot_and_value_and_no_longer_looks_like_a_companion(shared_cluster):
    async def scenario(payloads: PayloadKeys, client: RedisCluster) -> None:
        for key in (f"order:{{{uuid.uuid4().hex}}}".encode(), uuid.uuid4().hex.encode() + b"\xff"):
            companion = payloads.key_for(key)
            await client.set(companion, b"big")
            aside = await payloads.set_aside(key)
            assert aside is not None and aside.startswith(SET_ASIDE_PREFIX)
            assert key_slot(aside) == key_slot(companion)
            assert await client.get(aside) == b"big"
            assert await client.exists(companion) == 0
            assert payloads.key_of(aside) is None

    with_payloads(shared_cluster, scenario)
