"""The bounded queue between the node subscriptions and the leader gate: its bound, its order, its fairness."""

from __future__ import annotations

import asyncio

from expiryd.eventqueue import EventQueue
from expiryd.events import Expiration, event_bytes


def expiration(key: bytes) -> Expiration:
    return Expiration(key=key, node="n:1", received_at=1.0)


def test_queue_refuses_what_does_not_fit_and_keeps_order():
    queue = EventQueue(capacity=3, max_bytes=1 << 30)
    assert queue.put([expiration(b"a"), expiration(b"b")]) == 0
    assert queue.put([expiration(b"c"), expiration(b"d"), expiration(b"e")]) == 2
    batch = asyncio.run(queue.get())
    assert [e.key for e in batch] == [b"a", b"b", b"c"]
    assert len(queue) == 0


def test_queue_refuses_what_passes_its_bytes_and_makes_room_as_it_is_taken():
    small, large = expiration(b"s"), expiration(b"L" * 10_000)
    queue = EventQueue(capacity=100, max_bytes=event_bytes(large) + event_bytes(small))
    assert queue.put([small, large, small]) == 1
    assert queue.bytes == queue.max_bytes
    asyncio.run(queue.get())
    assert queue.bytes == 0
    assert queue.put([large]) == 0


def test_queue_get_waits_for_a_put():
    async def scenario() -> list[bytes]:
        queue = EventQueue(capacity=10, max_bytes=1 << 30)
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        queue.put([expiration(b"late")])
        return [e.key for e in await waiter]

    assert asyncio.run(scenario()) == [b"late"]


def test_put_within_waits_for_room_then_takes_the_rest_in_order():
    async def scenario() -> list[bytes]:
        queue = EventQueue(capacity=2, max_bytes=1 << 30)
        putting = asyncio.create_task(queue.put_within([expiration(k) for k in (b"a", b"b", b"c")], timeout=5))
        await asyncio.sleep(0.01)
        assert not putting.done()
        first = await queue.get()
        assert await putting == 0
        return [e.key for e in first + await queue.get()]

    assert asyncio.run(scenario()) == [b"a", b"b", b"c"]


def test_put_within_gives_up_after_its_timeout_and_reports_what_did_not_fit():
    async def scenario() -> int:
        queue = EventQueue(capacity=1, max_bytes=1 << 30)
        return await queue.put_within([expiration(b"a"), expiration(b"b"), expiration(b"c")], timeout=0.05)

    assert asyncio.run(scenario()) == 2


def test_a_busy_subscription_cannot_starve_another_waiting_for_room():
    async def scenario() -> list[bytes]:
        queue = EventQueue(capacity=1, max_bytes=1 << 30)
        queue.put([expiration(b"first")])

        async def busy_node() -> None:
            while True:
                await queue.put_within([expiration(b"busy")], timeout=5)

        busy = asyncio.create_task(busy_node())
        await asyncio.sleep(0)
        quiet = asyncio.create_task(queue.put_within([expiration(b"quiet")], timeout=5))
        await asyncio.sleep(0)
        taken: list[bytes] = []
        for _ in range(4):
            taken += [e.key for e in await queue.get()]
            await asyncio.sleep(0.01)
        busy.cancel()
        assert await quiet == 0
        return taken

    assert asyncio.run(scenario()) == [b"first", b"busy", b"quiet", b"busy"]


def test_room_goes_to_the_waiting_put_before_a_later_one():
    async def scenario() -> tuple[int, list[bytes]]:
        queue = EventQueue(capacity=1, max_bytes=1 << 30)
        queue.put([expiration(b"first")])
        waiting = asyncio.create_task(queue.put_within([expiration(b"waiting")], timeout=5))
        await asyncio.sleep(0)
        first = await queue.get()
        refused = queue.put([expiration(b"late")])
        await waiting
        return refused, [e.key for e in first + await queue.get()]

    assert asyncio.run(scenario()) == (1, [b"first", b"waiting"])


def test_the_oldest_receive_time_counts_the_queued_and_the_waiting():
    async def scenario() -> tuple[float | None, float | None, float | None]:
        queue = EventQueue(capacity=1, max_bytes=1 << 30)
        empty = queue.oldest()
        queue.put([Expiration(key=b"queued", node="n:1", received_at=5.0)])
        waiting = asyncio.create_task(queue.put_within([Expiration(key=b"w", node="n:2", received_at=3.0)], timeout=5))
        await asyncio.sleep(0.01)
        both = queue.oldest()
        await queue.get()
        await waiting
        return empty, both, queue.oldest()

    assert asyncio.run(scenario()) == (None, 3.0, 3.0)
