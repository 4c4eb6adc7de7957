"""The leader gate: followers remember, the leader routes, replays on taking over and records progress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from expiryd.config import BatchConfig, RouteConfig
from expiryd.deadletter import DeadLetters
from expiryd.eventqueue import EventQueue
from expiryd.events import Event, Expiration
from expiryd.gate import LeaderGate
from expiryd.metrics import Metrics
from expiryd.progress import ProgressMark
from expiryd.routing import Route, Router
from expiryd.scheduler import NoSchedule


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


class Gate:
    def __init__(
        self,
        *,
        term: int | None,
        replay: FakeReplay | None = None,
        internal_keys: frozenset[bytes] = frozenset(),
        heard_elsewhere: bool = False,
    ) -> None:
        self.since: dict[str, float | None] = {"n:1": 1.0, "n:2": 1.0}
        # Up to when each subscription has read (none known: marks move with the events taken alone).
        self.read: dict[str, float | None] = {}
        self.heard_elsewhere = heard_elsewhere
        self.queue = EventQueue(capacity=1000)
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
            leadership=self.leadership,
            router=Router(routes),
            replica="r1",
            metrics=self.metrics,
            replay=self.replay,
            dead_letters=DeadLetters(client=None, stream="dead", maxlen=9),
            overflow_wait=5.0,
            grace=5.0,
            due_times=NoSchedule(),
            now=time.time,
            read_through=lambda: self.read,
            internal_keys=internal_keys,
            coverage_since=lambda: self.since,
            covered_elsewhere=self._covered_elsewhere,
        )

    async def _covered_elsewhere(self, marks: dict[str, ProgressMark], after: float) -> bool | None:
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
        gate.gate.start()
        try:
            await asyncio.wait_for(scenario(gate), 10)
        finally:
            await gate.gate.aclose()

    asyncio.run(main())
    return gate


def test_a_follower_remembers_every_batch_and_hands_none_to_a_handler():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:1", b"x"))
        await until(lambda: len(g.replay.remembered) == 2)

    g = run(Gate(term=None), scenario)
    assert g.orders.events == [] and g.other.events == []
    assert g.counter("expiryd_events_skipped_total") == 2


def test_the_leader_hands_each_event_to_the_first_route_whose_glob_matches():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:1", b"session:2", b"order:3"))
        await until(lambda: len(g.orders.events) + len(g.other.events) == 3)

    g = run(Gate(term=4), scenario)
    assert [e.key for e in g.orders.events] == [b"order:1", b"order:3"]
    assert [e.key for e in g.other.events] == [b"session:2"]
    assert {e.term for e in g.orders.events + g.other.events} == {4}


def test_expiryds_own_keys_never_reach_a_handler():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"redlock:{expiryd}:leader", b"order:1"))
        await until(lambda: len(g.orders.events) == 1)

    g = run(Gate(term=4, internal_keys=frozenset({b"redlock:{expiryd}:leader"})), scenario)
    assert g.other.events == []


def test_a_new_leader_replays_what_the_last_left_unfinished_before_new_events():
    replay = FakeReplay(unfinished=expirations(b"order:missed"))

    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:new"))
        await until(lambda: len(g.orders.events) == 2)

    g = run(Gate(term=7, replay=replay), scenario)
    assert [e.key for e in g.orders.events] == [b"order:missed", b"order:new"]
    assert [term for term, _ in replay.takeovers] == [7]


def test_the_recorded_marks_name_the_last_event_finished_on_each_node():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:1", b"order:2") + expirations(b"order:9", node="n:2"))
        await until(lambda: bool(g.replay.recorded) and len(g.replay.recorded[-1][1]) == 2)

    g = run(Gate(term=3), scenario)
    term, marks = g.replay.recorded[-1]
    assert term == 3
    assert marks == {"n:1": ProgressMark(b"order:2", 1.0, 3), "n:2": ProgressMark(b"order:9", 0.0, 3)}


def test_a_leader_that_steps_down_starts_its_next_term_from_the_marks_it_had_reached():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:1"))
        await until(lambda: len(g.orders.events) == 1)
        await until(lambda: bool(g.replay.recorded))
        g.leadership.current = None
        g.queue.put(expirations(b"order:2"))
        await until(lambda: b"order:2" in g.replay.remembered)
        g.leadership.current = 9
        g.queue.put(expirations(b"order:3"))
        await until(lambda: len(g.orders.events) == 2)

    g = run(Gate(term=8), scenario)
    assert [term for term, _ in g.replay.takeovers] == [8, 9]
    assert g.replay.takeovers[1][1]["n:1"] == ProgressMark(b"order:1", 0.0, 8)


def test_closing_the_gate_finishes_what_the_routes_hold_and_records_the_final_marks():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(*(f"order:{i}".encode() for i in range(50))))
        await until(lambda: len(g.queue) == 0)

    g = run(Gate(term=2), scenario)
    assert len(g.orders.events) == 50
    assert g.replay.recorded[-1][1]["n:1"].key == b"order:49"


def test_a_quiet_primarys_mark_moves_up_to_the_newest_event_taken_from_the_queue():
    async def scenario(g: Gate) -> None:
        g.queue.put([Expiration(b"order:1", "n:1", 50.0)])
        await until(lambda: bool(g.replay.recorded) and "n:2" in g.replay.recorded[-1][1])

    g = run(Gate(term=3), scenario)
    assert g.replay.recorded[-1][1]["n:2"] == ProgressMark(b"", 50.0, 3)
    assert g.replay.recorded[-1][1]["n:1"].received_at == 50.0


def test_a_primary_that_publishes_nothing_has_its_mark_moved_up_to_what_was_read_from_it():
    async def scenario(g: Gate) -> None:
        g.read = {"n:1": 100.0, "n:2": 100.0}
        g.queue.wake()  # as on being elected: the term begins without an event
        await until(lambda: bool(g.replay.recorded) and len(g.replay.recorded[-1][1]) == 2)

    g = run(Gate(term=3), scenario)
    assert g.replay.recorded[-1][1] == {"n:1": ProgressMark(b"", 100.0, 3), "n:2": ProgressMark(b"", 100.0, 3)}


def test_a_quiet_mark_stops_short_of_a_batch_taken_but_not_yet_routed():
    released = asyncio.Event()

    class SlowTakeover(FakeReplay):
        async def unfinished(
            self, *, term: int, own: dict[str, ProgressMark]
        ) -> tuple[list[Expiration], dict[str, ProgressMark]]:
            await released.wait()  # the last leader's marks, read from a slow master
            return await super().unfinished(term=term, own=own)

    async def scenario(g: Gate) -> None:
        g.read = {"n:1": 100.0, "n:2": 100.0}
        g.queue.put([Expiration(b"order:1", "n:2", 50.0)])
        await asyncio.sleep(0.1)  # ten record intervals with the batch in hand
        released.set()
        await until(lambda: len(g.orders.events) == 1)

    g = run(Gate(term=3, replay=SlowTakeover()), scenario)
    assert g.replay.recorded, "no progress was recorded while the batch was in hand"
    assert all(marks["n:2"].received_at <= 50.0 for _, marks in g.replay.recorded if "n:2" in marks)


def test_a_leader_that_lost_a_subscription_another_replica_heard_records_the_mark_before_the_gap_and_hands_over():
    async def scenario(g: Gate) -> None:
        g.queue.put([Expiration(b"order:1", "n:1", 10.0)])
        await until(lambda: len(g.orders.events) == 1)
        g.gate.subscription_lost("n:1", heard_until=11.0)
        g.queue.put([Expiration(b"order:after-the-gap", "n:1", 20.0)])
        await until(lambda: bool(g.leadership.handed_over))

    g = run(Gate(term=3, heard_elsewhere=True), scenario)
    final = g.replay.recorded[-1][1]
    assert final["n:1"].received_at <= 11.0  # the replica that heard the gap replays from before it
    assert g.leadership.handed_over == ["gap in the subscription history"]


def test_a_gap_no_other_replica_heard_is_accepted_and_the_mark_moves_on():
    async def scenario(g: Gate) -> None:
        g.queue.put([Expiration(b"order:1", "n:1", 10.0)])
        await until(lambda: len(g.orders.events) == 1)
        g.gate.subscription_lost("n:1", heard_until=11.0)
        g.since["n:1"] = 14.0
        g.queue.put([Expiration(b"order:after-the-gap", "n:1", 20.0)])
        await until(lambda: g.recorded("n:1", b"order:after-the-gap"))

    g = run(Gate(term=3), scenario)
    assert g.leadership.handed_over == []
    assert g.metrics.registry.get_sample_value("expiryd_leader_history_gaps_total", {"outcome": "uncovered"}) == 1
    assert g.metrics.registry.get_sample_value("expiryd_unheard_seconds_total") == 3.0


def test_a_lost_subscription_to_a_replica_node_is_no_gap():
    async def scenario(g: Gate) -> None:
        g.queue.put([Expiration(b"order:1", "n:1", 10.0)])
        await until(lambda: len(g.orders.events) == 1)
        g.gate.subscription_lost("replica:9", heard_until=11.0)
        g.queue.put([Expiration(b"order:2", "n:1", 20.0)])
        await until(lambda: g.recorded("n:1", b"order:2"))

    g = run(Gate(term=3, heard_elsewhere=True), scenario)
    assert g.leadership.handed_over == []


def test_a_gap_on_a_primary_that_left_the_cluster_is_let_go_without_a_hand_over():
    async def scenario(g: Gate) -> None:
        g.queue.put([Expiration(b"order:1", "n:1", 10.0)])
        await until(lambda: len(g.orders.events) == 1)
        g.gate.subscription_lost("n:1", heard_until=11.0)
        del g.since["n:1"]  # failed over: no longer a primary
        g.queue.put([Expiration(b"order:2", "n:1", 20.0)])
        await until(lambda: g.recorded("n:1", b"order:2"))

    g = run(Gate(term=3, heard_elsewhere=True), scenario)
    assert g.leadership.handed_over == []
