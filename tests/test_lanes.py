"""Lanes: split by key, bounded, taken in batches, shed only when the subscriptions are stuck."""

from __future__ import annotations

import asyncio

from expiryd.completion import Pending
from expiryd.events import Expiration
from expiryd.lanes import Lanes


def pendings(*keys: bytes) -> list[Pending]:
    return [Pending(Expiration(key, "n:1", 1.0)) for key in keys]


def keys_of(batch: list[Pending]) -> list[bytes]:
    return [pending.expiration.key for pending in batch]


def lanes(*, count: int = 1, queue_size: int = 100, blocked: float = 0.0, shed_after: float = 1.0) -> Lanes:
    return Lanes(count=count, queue_size=queue_size, upstream_blocked=lambda: blocked, shed_after=shed_after)


def test_the_events_of_one_key_go_to_one_lane_in_arrival_order():
    async def scenario() -> list[list[bytes]]:
        split = lanes(count=4)
        await split.submit(pendings(b"a", b"b", b"a", b"c", b"a"))
        split.close()
        return [keys_of(await split.take(index, size=10, max_wait=0)) for index in range(4)]

    taken = asyncio.run(scenario())
    assert sum(1 for batch in taken if b"a" in batch) == 1
    lane_of_a = next(batch for batch in taken if b"a" in batch)
    assert [key for key in lane_of_a if key == b"a"] == [b"a", b"a", b"a"]
    assert sorted(key for batch in taken for key in batch) == [b"a", b"a", b"a", b"b", b"c"]


def test_a_full_lane_makes_submit_wait_until_a_batch_is_taken():
    async def scenario() -> tuple[bool, list[bytes], list[Pending]]:
        split = lanes(queue_size=2)
        submitting = asyncio.create_task(split.submit(pendings(b"a", b"b", b"c")))
        await asyncio.sleep(0.05)
        waited = not submitting.done()
        first = await split.take(0, size=2, max_wait=0)
        shed = await submitting
        return waited, keys_of(first), shed

    waited, first, shed = asyncio.run(scenario())
    assert waited and first == [b"a", b"b"] and shed == []


def test_what_does_not_fit_is_shed_once_the_subscriptions_have_waited_shed_after():
    async def scenario() -> tuple[list[bytes], int]:
        split = lanes(queue_size=2, blocked=1.0, shed_after=1.0)
        shed = await split.submit(pendings(b"a", b"b", b"c", b"d"))
        return keys_of(shed), split.depth()

    assert asyncio.run(scenario()) == ([b"c", b"d"], 2)


def test_take_waits_up_to_max_wait_for_the_batch_to_fill():
    async def scenario() -> list[bytes]:
        split = lanes()
        await split.submit(pendings(b"a"))

        async def later() -> None:
            await asyncio.sleep(0.02)
            await split.submit(pendings(b"b"))

        feeding = asyncio.create_task(later())
        batch = await split.take(0, size=2, max_wait=10.0)
        await feeding
        return keys_of(batch)

    assert asyncio.run(scenario()) == [b"a", b"b"]


def test_take_returns_at_most_size_events():
    async def scenario() -> list[bytes]:
        split = lanes()
        await split.submit(pendings(b"a", b"b", b"c"))
        return keys_of(await split.take(0, size=2, max_wait=0))

    assert asyncio.run(scenario()) == [b"a", b"b"]


def test_closed_lanes_give_what_is_queued_then_nothing():
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        split = lanes()
        await split.submit(pendings(b"a"))
        split.close()
        return keys_of(await split.take(0, size=10, max_wait=1.0)), keys_of(await split.take(0, size=10, max_wait=1.0))

    assert asyncio.run(scenario()) == ([b"a"], [])


def test_cleared_lanes_forget_what_is_queued():
    async def scenario() -> tuple[int, list[bytes]]:
        split = lanes()
        await split.submit(pendings(b"a", b"b"))
        split.clear()
        return split.depth(), keys_of(await split.take(0, size=10, max_wait=0))

    assert asyncio.run(scenario()) == (0, [])
