"""A leader gate and its progress recorder on fakes: the election, the replay and the fan-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from expiryd.config import BatchConfig, RouteConfig
from expiryd.deadletter import DeadLetters
from expiryd.eventqueue import EventQueue
from expiryd.events import Event, Expiration
from expiryd.gate import LeaderGate
from expiryd.leadership import TermSignal
from expiryd.metrics import Metrics
from expiryd.progress import ProgressMark
from expiryd.recorder import ProgressRecorder
from expiryd.routing import Route, Router
from expiryd.scheduler import NoSchedule
from expiryd.shift import ShiftSettings


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def handle(self, events: list[Event]) -> None:
        self.events += events

    async def aclose(self) -> None:
        pass


class Term:
    def __init__(self, term: int | None) -> None:
        self.current = term
        self.handed_over: list[str] = []

    def term(self) -> int | None:
        return self.current

    def hand_over(self, reason: str) -> None:
        self.handed_over.append(reason)
        self.current = None


class FakeReplay:
    """Remembers what the gate hands it; replays ``unfinished`` on taking over."""

    record_interval = 0.01

    def __init__(self, unfinished: list[Expiration] | None = None) -> None:
        self.remembered: list[bytes] = []
        self.recorded: list[tuple[int, dict[str, ProgressMark]]] = []
        self.takeovers: list[tuple[int, dict[str, ProgressMark]]] = []
        self._unfinished = unfinished or []

    def remember(self, batch: list[Expiration]) -> None:
        self.remembered += [expiration.key for expiration in batch]

    async def unfinished(
        self, *, term: int, own: dict[str, ProgressMark]
    ) -> tuple[list[Expiration], dict[str, ProgressMark]]:
        self.takeovers.append((term, own))
        return self._unfinished, own

    async def record(self, *, term: int, marks: dict[str, ProgressMark] | None) -> None:
        if marks is not None:
            self.recorded.append((term, marks))

    def report(self) -> None:
        pass


class Subscriptions:
    """What the fan-in tells the recorder: when each primary's subscription began, what was read, the gaps."""

    def __init__(self) -> None:
        self.since: dict[str, float | None] = {"n:1": 1.0, "n:2": 1.0}
        # Up to when each subscription has read (none known: marks move with the events taken alone).
        self.read: dict[str, float | None] = {}
        self.gaps: dict[str, float] = {}

    def coverage_since(self) -> dict[str, float | None]:
        return self.since

    def read_through(self) -> dict[str, float | None]:
        return self.read

    def take_gaps(self) -> dict[str, float]:
        gaps, self.gaps = self.gaps, {}
        return gaps


class Gate:
    """A leader gate and its progress recorder, with fakes for the election, the replay and the fan-in."""

    def __init__(
        self,
        *,
        term: int | None,
        replay: FakeReplay | None = None,
        internal_keys: frozenset[bytes] = frozenset(),
        heard_elsewhere: bool = False,
    ) -> None:
        self.subscriptions = Subscriptions()
        self.heard_elsewhere = heard_elsewhere
        self.queue = EventQueue(capacity=1000, max_bytes=1 << 30)
        self.signal = TermSignal(queue=self.queue)
        self.leadership = Term(term)
        self.orders, self.other = Recorder(), Recorder()
        self.metrics = Metrics()
        self.replay = replay or FakeReplay()
        routes = [
            Route(config=RouteConfig(match="order:*", name="orders", batch=BatchConfig(size=10)), handler=self.orders),
            Route(config=RouteConfig(match="*", name="other"), handler=self.other),
        ]
        self.gate = LeaderGate(
            queue=self.queue,
            signal=self.signal,
            leadership=self.leadership,
            replay=self.replay,
            due_times=NoSchedule(),
            settings=ShiftSettings(
                replica="r1",
                router=Router(routes),
                leadership=self.leadership,
                dead_letters=DeadLetters(client=None, stream="dead", maxlen=9, max_bytes=1 << 20, metrics=Metrics()),
                metrics=self.metrics,
                upstream_blocked=self.queue.blocked_for,
                overflow_wait=5.0,
                grace=5.0,
                now=time.time,
                internal_keys=internal_keys,
            ),
            metrics=self.metrics,
        )
        self.recorder = ProgressRecorder(
            gate=self.gate,
            queue=self.queue,
            replay=self.replay,
            leadership=self.leadership,
            subscriptions=self.subscriptions,
            succession=self,
            metrics=self.metrics,
            idle_after=2.0,
        )
        if term is not None:
            self.signal.announce(term)

    def elect(self, term: int | None) -> None:
        """What the elector does on a change of term: the term reads anew, and the change is announced."""
        self.leadership.current = term
        self.signal.announce(term)

    async def covered_elsewhere(self, marks: dict[str, ProgressMark], after: float) -> bool | None:
        return self.heard_elsewhere

    def counter(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0

    def recorded(self, node: str, key: bytes) -> bool:
        """Whether a recorded mark of ``node`` named ``key``."""
        return any(node in marks and marks[node].key == key for _, marks in self.replay.recorded)


def expirations(*keys: bytes, node: str = "n:1") -> list[Expiration]:
    return [Expiration(key, node, float(index)) for index, key in enumerate(keys)]


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def run(gate: Gate, scenario: Callable[[Gate], Awaitable[None]]) -> Gate:
    async def main() -> None:
        # Started and closed in the daemon's order: the recorder records after the gate has drained.
        async with gate.recorder, gate.gate:
            await asyncio.wait_for(scenario(gate), 10)

    asyncio.run(main())
    return gate
