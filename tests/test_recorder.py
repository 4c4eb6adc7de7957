"""The progress recorder: the marks a leader records, quiet primaries, and gaps in its history."""

from __future__ import annotations

import asyncio

from expiryd.events import Expiration
from expiryd.progress import ProgressMark

from .leading import FakeReplay, Gate, expirations, run, until


def test_the_recorded_marks_name_the_last_event_finished_on_each_node():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:1", b"order:2") + expirations(b"order:9", node="n:2"))
        await until(lambda: bool(g.replay.recorded) and len(g.replay.recorded[-1][1]) == 2)

    g = run(Gate(term=3), scenario)
    term, marks = g.replay.recorded[-1]
    assert term == 3
    assert marks == {
        "n:1": ProgressMark(b"order:2", 1.0, 3, before=(b"order:1",)),
        "n:2": ProgressMark(b"order:9", 0.0, 3),
    }


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
        g.subscriptions.read = {"n:1": 100.0, "n:2": 100.0}
        g.elect(3)  # the term begins without an event
        await until(lambda: bool(g.replay.recorded) and len(g.replay.recorded[-1][1]) == 2)

    g = run(Gate(term=None), scenario)
    assert g.replay.recorded[-1][1] == {"n:1": ProgressMark(b"", 100.0, 3), "n:2": ProgressMark(b"", 100.0, 3)}


def test_a_quiet_mark_stops_short_of_a_batch_taken_but_not_yet_routed():
    released = asyncio.Event()

    class SlowTakeover(FakeReplay):
        async def unfinished(
            self, *, term: int, own: dict[str, ProgressMark]
        ) -> tuple[list[Expiration], dict[str, ProgressMark]]:
            await released.wait()  # the last leader's marks, read from a slow master
            return await super().unfinished(term=term, own=own)

    while_in_hand: list[dict[str, ProgressMark]] = []

    async def scenario(g: Gate) -> None:
        g.subscriptions.read = {"n:1": 100.0, "n:2": 100.0}
        g.queue.put([Expiration(b"order:1", "n:2", 50.0)])
        await asyncio.sleep(0.1)  # ten record intervals with the batch in hand
        while_in_hand.extend(marks for _, marks in g.replay.recorded)
        released.set()
        await until(lambda: len(g.orders.events) == 1)

    run(Gate(term=3, replay=SlowTakeover()), scenario)
    assert while_in_hand, "no progress was recorded while the batch was in hand"
    assert all(marks["n:2"].received_at <= 50.0 for marks in while_in_hand if "n:2" in marks)


def test_a_leader_that_lost_a_subscription_another_replica_heard_records_the_mark_before_the_gap_and_hands_over():
    async def scenario(g: Gate) -> None:
        g.queue.put([Expiration(b"order:1", "n:1", 10.0)])
        await until(lambda: len(g.orders.events) == 1)
        g.subscriptions.gaps["n:1"] = 11.0
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
        g.subscriptions.gaps["n:1"] = 11.0
        g.subscriptions.since["n:1"] = 14.0
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
        g.subscriptions.gaps["replica:9"] = 11.0
        g.queue.put([Expiration(b"order:2", "n:1", 20.0)])
        await until(lambda: g.recorded("n:1", b"order:2"))

    g = run(Gate(term=3, heard_elsewhere=True), scenario)
    assert g.leadership.handed_over == []


def test_a_gap_on_a_primary_that_left_the_cluster_is_let_go_without_a_hand_over():
    async def scenario(g: Gate) -> None:
        g.queue.put([Expiration(b"order:1", "n:1", 10.0)])
        await until(lambda: len(g.orders.events) == 1)
        g.subscriptions.gaps["n:1"] = 11.0
        del g.subscriptions.since["n:1"]  # failed over: no longer a primary
        g.queue.put([Expiration(b"order:2", "n:1", 20.0)])
        await until(lambda: g.recorded("n:1", b"order:2"))

    g = run(Gate(term=3, heard_elsewhere=True), scenario)
    assert g.leadership.handed_over == []
