"""A shift: one term's routes and completion; the takeover first, then the queue; retired on step-down."""

from __future__ import annotations

import asyncio
import time

from expiryd.config import RouteConfig
from expiryd.deadletter import DeadLetters
from expiryd.events import Event, Expiration
from expiryd.metrics import Metrics
from expiryd.progress import ProgressMark
from expiryd.routing import Route, Router
from expiryd.shift import Shift, ShiftSettings


class Held:
    """A handler that holds every call until released."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.release = asyncio.Event()

    async def handle(self, events: list[Event]) -> None:
        await self.release.wait()
        self.events += events

    async def aclose(self) -> None:
        pass


class Leading:
    def __init__(self, term: int | None) -> None:
        self.current = term

    def term(self) -> int | None:
        return self.current


def shift(handler: Held, *, term: int = 5, leadership: Leading | None = None) -> Shift:
    route = Route(config=RouteConfig(match="*", name="all"), handler=handler)
    settings = ShiftSettings(
        replica="r1",
        router=Router([route]),
        leadership=leadership or Leading(term),
        dead_letters=DeadLetters(client=None, stream="dead", maxlen=9, max_bytes=1 << 20, metrics=Metrics()),
        metrics=Metrics(),
        upstream_blocked=lambda: 0.0,
        overflow_wait=5.0,
        grace=0.5,
        now=time.time,
        internal_keys=frozenset(),
    )
    return Shift(term=term, marks={}, settings=settings)


def test_the_takeover_starts_from_the_last_leaders_marks_and_its_events_are_in_flight_until_finished():
    async def main() -> None:
        handler = Held()
        work = shift(handler)
        last = {"n:1": ProgressMark(b"done-before", 1.0, 4)}
        await work.take_over([Expiration(b"left-over", "n:1", 2.0)], marks=last)
        assert work.keys_in_flight() == {b"left-over"}
        assert work.completion.marks() == last
        handler.release.set()
        while work.keys_in_flight():
            await asyncio.sleep(0.001)
        assert work.completion.marks()["n:1"] == ProgressMark(b"left-over", 2.0, 5)
        await work.aclose()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_processed_batch_moves_what_the_shift_has_taken_through_to_its_newest_event():
    async def main() -> None:
        handler = Held()
        handler.release.set()
        work = shift(handler)
        await work.process([Expiration(b"a", "n:1", 3.0), Expiration(b"b", "n:2", 4.0)])
        assert (work.taken_through, work.in_hand) == (4.0, None)
        await work.aclose()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_retired_shift_gives_the_call_in_flight_its_grace_but_moves_no_mark_after_retiring():
    async def main() -> None:
        handler = Held()
        work = shift(handler)
        await work.process([Expiration(b"in-flight", "n:1", 3.0)])
        await asyncio.sleep(0.05)  # the lane has called the handler, which holds the call
        marks, closing = work.retire()
        handler.release.set()
        await closing
        assert marks == {}  # nothing was finished when the term ended
        assert [(event.key, event.term) for event in handler.events] == [(b"in-flight", 5)]
        assert work.completion.take_marks() is None  # its late finish is not recorded

    asyncio.run(asyncio.wait_for(main(), 10))
