"""The leader gate: followers remember, the leader routes, and a new leader replays before new events."""

from __future__ import annotations

from expiryd.progress import ProgressMark

from .leading import FakeReplay, Gate, expirations, run, until


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


def test_a_leader_that_steps_down_starts_its_next_term_from_the_marks_it_had_reached():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:1"))
        await until(lambda: len(g.orders.events) == 1)
        await until(lambda: bool(g.replay.recorded))
        g.elect(None)
        g.queue.put(expirations(b"order:2"))
        await until(lambda: b"order:2" in g.replay.remembered)
        g.elect(9)
        g.queue.put(expirations(b"order:3"))
        await until(lambda: len(g.orders.events) == 2)

    g = run(Gate(term=8), scenario)
    assert [term for term, _ in g.replay.takeovers] == [8, 9]
    assert g.replay.takeovers[1][1]["n:1"] == ProgressMark(b"order:1", 0.0, 8)


def test_a_new_leader_replays_as_soon_as_its_term_is_announced_without_waiting_for_an_event():
    replay = FakeReplay(unfinished=expirations(b"order:missed"))

    async def scenario(g: Gate) -> None:
        g.elect(5)
        await until(lambda: len(g.orders.events) == 1)

    g = run(Gate(term=None, replay=replay), scenario)
    assert [(e.key, e.term) for e in g.orders.events] == [(b"order:missed", 5)]


def test_a_leader_whose_step_down_is_announced_hands_the_next_batch_to_no_route():
    async def scenario(g: Gate) -> None:
        g.queue.put(expirations(b"order:1"))
        await until(lambda: len(g.orders.events) == 1)
        g.elect(None)
        g.queue.put(expirations(b"order:2"))
        await until(lambda: b"order:2" in g.replay.remembered)

    g = run(Gate(term=4), scenario)
    assert [e.key for e in g.orders.events] == [b"order:1"]
    assert g.gate.shift is None
