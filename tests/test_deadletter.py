"""The dead-letter stream: entries as written, and its bound in bytes."""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

from expiryd.deadletter import DeadLetters
from expiryd.events import Event
from expiryd.keys import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_LOCK_NAME, lease_key
from expiryd.metrics import Metrics
from tests.test_delivery import ENTRY_BYTES, StreamClient


def event(n: int) -> Event:
    return Event(key=b"order:%d" % n, node="n:1", received_at=1.0, term=1, replica="r1")


def dead_letters(client: StreamClient, *, max_bytes: int, metrics: Metrics) -> DeadLetters:
    return DeadLetters(client=client, stream="dead", maxlen=100_000, max_bytes=max_bytes, metrics=metrics)


def test_a_stream_past_its_bytes_loses_its_oldest_entries_and_counts_them():
    client, metrics = StreamClient(), Metrics()
    stream = dead_letters(client, max_bytes=50 * ENTRY_BYTES, metrics=metrics)
    asyncio.run(stream.write(route="orders", events=[event(n) for n in range(80)], error="HTTP 400", attempts=1))
    assert len(client.entries) == 45  # nine tenths of the bound: the next writes do not trim again at once
    assert client.entries[0]["key"] == b"order:35"
    assert metrics.dead_letters_trimmed._value.get() == 35
    assert metrics.dead_letter_entries._value.get() == 45
    assert metrics.dead_letter_bytes._value.get() == 45 * ENTRY_BYTES


def test_a_stream_within_its_bytes_keeps_every_entry():
    client, metrics = StreamClient(), Metrics()
    stream = dead_letters(client, max_bytes=50 * ENTRY_BYTES, metrics=metrics)
    asyncio.run(stream.write(route="orders", events=[event(n) for n in range(50)], error="HTTP 400", attempts=1))
    assert len(client.entries) == 50
    assert metrics.dead_letters_trimmed._value.get() == 0


def test_the_default_stream_is_far_from_the_lease_in_slot_space():
    """On different primaries whenever 2 to 6 of them share the 16,384 slots evenly."""
    stream, lease = key_slot(DEFAULT_DEAD_LETTER_STREAM.encode()), key_slot(lease_key(DEFAULT_LOCK_NAME).encode())
    for primaries in range(2, 7):
        share = 16384 / primaries
        assert int(stream // share) != int(lease // share), primaries
