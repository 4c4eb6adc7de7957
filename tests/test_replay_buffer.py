"""The replay buffer's rules for what a new leader replays and how long history is kept (pure unit tests)."""

from __future__ import annotations

import time

from expiryd.events import Expiration
from expiryd.metrics import Metrics
from expiryd.replay import STALE_MARK_AFTER, ProgressMark, Replay, ReplayBuffer, event_bytes, without_stale_marks

NOW = time.time()  # the buffers here keep an hour, so a slow run does not age them out


def buffer_of(*events: tuple[str, str, float]) -> ReplayBuffer:
    buffer = ReplayBuffer(window=3600.0, max_bytes=1 << 20, now=time.time)
    buffer.append([Expiration(key.encode(), node, NOW + at) for key, node, at in events])
    return buffer


def keys(expirations: list[Expiration]) -> list[str]:
    return [e.key.decode() for e in expirations]


def test_replays_what_came_after_the_mark_on_each_node():
    buffer = buffer_of(("a1", "A", 0.0), ("b1", "B", 0.1), ("a2", "A", 0.2), ("b2", "B", 0.3), ("a3", "A", 0.4))
    marks = {"A": ProgressMark(b"a2", NOW + 0.25, 3), "B": ProgressMark(b"b1", NOW + 0.05, 3)}
    assert keys(buffer.after(marks, tolerance=2.0)) == ["b2", "a3"]


def test_a_node_without_a_mark_is_replayed_whole():
    buffer = buffer_of(("a1", "A", 0.0), ("n1", "NEW", 0.1), ("n2", "NEW", 0.2))
    marks = {"A": ProgressMark(b"a1", NOW, 3)}
    assert keys(buffer.after(marks, tolerance=2.0)) == ["n1", "n2"]


def test_a_repeated_key_is_matched_at_the_occurrence_nearest_the_mark():
    buffer = buffer_of(("k", "A", 0.0), ("x", "A", 5.0), ("k", "A", 10.0), ("y", "A", 10.5))
    assert keys(buffer.after({"A": ProgressMark(b"k", NOW + 0.1, 1)}, tolerance=2.0)) == ["x", "k", "y"]
    assert keys(buffer.after({"A": ProgressMark(b"k", NOW + 9.9, 1)}, tolerance=2.0)) == ["y"]


def test_a_mark_older_than_the_buffer_replays_the_whole_node():
    buffer = buffer_of(("a5", "A", 10.0), ("a6", "A", 11.0))
    assert keys(buffer.after({"A": ProgressMark(b"a1", NOW, 1)}, tolerance=2.0)) == ["a5", "a6"]


def test_a_mark_missing_from_a_covering_buffer_falls_back_to_time_minus_tolerance():
    buffer = buffer_of(("a1", "A", 0.0), ("a3", "A", 4.0), ("a4", "A", 6.0), ("a5", "A", 9.0))
    assert keys(buffer.after({"A": ProgressMark(b"gone", NOW + 7.0, 1)}, tolerance=2.0)) == ["a4", "a5"]


def test_unreadable_progress_replays_everything():
    buffer = buffer_of(("a1", "A", 0.0), ("b1", "B", 0.1))
    assert keys(buffer.after(None, tolerance=2.0)) == ["a1", "b1"]


def test_the_buffer_forgets_by_age_and_by_size():
    now = time.time()
    two_events = 2 * event_bytes(Expiration(b"a", "A", now))
    buffer = ReplayBuffer(window=10.0, max_bytes=two_events, now=time.time)
    buffer.append([Expiration(b"old", "A", now - 20), Expiration(b"a", "A", now), Expiration(b"b", "B", now)])
    buffer.trim(now=now)
    assert keys(buffer.after(None, tolerance=1.0)) == ["a", "b"]
    buffer.append([Expiration(b"c", "A", now + 0.1)])
    buffer.trim(now=now)
    assert keys(buffer.after(None, tolerance=1.0)) == ["b", "c"]
    assert buffer.take_evicted() == 1
    assert dict(buffer.per_node) == {"A": 1, "B": 1}
    assert buffer.bytes == two_events


def test_a_long_key_takes_the_room_of_several_short_ones():
    now = time.time()
    buffer = ReplayBuffer(window=10.0, max_bytes=4 * event_bytes(Expiration(b"a", "A", now)), now=time.time)
    buffer.append([Expiration(b"a", "A", now), Expiration(b"b", "A", now)])
    buffer.append([Expiration(b"k" * 300, "A", now)])
    assert keys(buffer.after(None, tolerance=1.0)) == ["k" * 300]
    assert buffer.take_evicted() == 2


def test_a_mark_covers_only_the_event_of_its_own_kind():
    # A key whose field and whole-key TTLs are due together: both events can come in one read, at one time.
    buffer = ReplayBuffer(window=3600.0, max_bytes=1 << 20, now=time.time)
    buffer.append([Expiration(b"h", "A", NOW), Expiration(b"h", "A", NOW, "hexpired"), Expiration(b"z", "A", NOW)])
    after_expired = buffer.after({"A": ProgressMark(b"h", NOW, 1)}, tolerance=2.0)
    assert [(e.key, e.kind) for e in after_expired] == [(b"h", "hexpired"), (b"z", "expired")]
    after_hexpired = buffer.after({"A": ProgressMark(b"h", NOW, 1, "hexpired")}, tolerance=2.0)
    assert [(e.key, e.kind) for e in after_hexpired] == [(b"z", "expired")]


def test_a_mark_keeps_its_kind_through_json_and_older_marks_read_as_expired():
    mark = ProgressMark(b"h", NOW, 3, "hexpired")
    assert ProgressMark.from_json(mark.to_json()) == mark
    older = '{"key_b64": "aA==", "received_at": 1.0, "term": 2}'
    assert ProgressMark.from_json(older) == ProgressMark(b"h", 1.0, 2, "expired")


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_history_past_the_window_stays_while_no_leader_makes_progress():
    clock = Clock(1000.0)
    buffer = ReplayBuffer(window=10.0, max_bytes=1 << 20, now=clock)
    buffer.append([Expiration(b"during-the-stall", "A", 1005.0)])
    clock.at = 1030.0  # the lease's shard stalled: no marks moved for 30 s
    buffer.trim()
    assert keys(buffer.after(None, tolerance=1.0)) == ["during-the-stall"]


def test_history_ages_out_once_a_leader_moves_its_marks_again():
    clock = Clock(1000.0)
    buffer = ReplayBuffer(window=10.0, max_bytes=1 << 20, now=clock)
    buffer.append([Expiration(b"passed", "A", 1005.0)])
    clock.at = 1030.0
    buffer.progressed(at=1029.0)
    buffer.trim()
    assert len(buffer) == 0


def test_marks_read_for_the_first_time_after_a_stall_keep_the_history_since_they_were_written():
    clock = Clock(1000.0)
    buffer = ReplayBuffer(window=10.0, max_bytes=1 << 20, now=clock)
    replay = Replay(buffer=buffer, store=None, tolerance=2.0, record_interval=1.0, metrics=Metrics())  # type: ignore[arg-type]
    buffer.append([Expiration(b"during-the-stall", "A", 1012.0)])
    clock.at = 1040.0  # the stall is over; this replica never looked at the marks before it
    replay.saw_marks({"A": ProgressMark(b"before", 1010.0, 3)})
    buffer.trim()
    assert keys(buffer.after(None, tolerance=1.0)) == ["during-the-stall"]


def test_marks_that_moved_since_the_last_look_count_as_progress_and_unmoved_ones_do_not():
    clock = Clock(1000.0)
    buffer = ReplayBuffer(window=10.0, max_bytes=1 << 20, now=clock)
    replay = Replay(buffer=buffer, store=None, tolerance=2.0, record_interval=1.0, metrics=Metrics())  # type: ignore[arg-type]
    buffer.append([Expiration(b"a", "A", 1005.0)])
    replay.saw_marks({"A": ProgressMark(b"a", 1005.0, 3)})
    clock.at = 1030.0
    replay.saw_marks({"A": ProgressMark(b"a", 1005.0, 3)})  # read again, stalled: the same marks
    buffer.trim()
    assert len(buffer) == 1
    replay.saw_marks({"A": ProgressMark(b"", 1028.0, 4)})
    buffer.trim()
    assert len(buffer) == 0


def test_the_mark_of_a_node_silent_for_an_hour_while_others_moved_is_not_carried_on():
    now = 10_000.0
    marks = {
        "current:1": ProgressMark(b"", now, 3),
        "idle-but-current:2": ProgressMark(b"", now - 5.0, 3),
        "gone:3": ProgressMark(b"k", now - STALE_MARK_AFTER - 1.0, 2),
    }
    assert set(without_stale_marks(marks)) == {"current:1", "idle-but-current:2"}


def test_a_mark_read_seconds_late_by_a_lagging_leader_is_found_by_its_key_and_the_keys_before_it():
    # This replica heard the node's events 5 s before the leader read them (its queue was full).
    buffer = ReplayBuffer(window=3600.0, max_bytes=1 << 20, now=time.time)
    buffer.append([Expiration(key, "A", NOW + index * 0.1) for index, key in enumerate([b"a", b"b", b"c", b"d"])])
    mark = ProgressMark(b"c", NOW + 0.2 + 5.0, 3, before=(b"a", b"b"))
    assert keys(buffer.after({"A": mark}, tolerance=2.0)) == ["d"]


def test_of_several_places_with_the_marks_key_and_context_the_last_heard_by_the_marks_time_is_taken():
    buffer = ReplayBuffer(window=3600.0, max_bytes=1 << 20, now=time.time)
    sequence = [b"x", b"y", b"k", b"z", b"x", b"y", b"k", b"w"]
    buffer.append([Expiration(key, "A", NOW + index) for index, key in enumerate(sequence)])
    mark = ProgressMark(b"k", NOW + 2.5, 3, before=(b"x", b"y"))  # the first x, y, k: the second came later
    assert keys(buffer.after({"A": mark}, tolerance=1.0)) == ["z", "x", "y", "k", "w"]


def test_a_mark_whose_context_this_replica_never_heard_is_placed_by_its_key_within_the_tolerance():
    buffer = ReplayBuffer(window=3600.0, max_bytes=1 << 20, now=time.time)
    buffer.append([Expiration(key, "A", NOW + index) for index, key in enumerate([b"p", b"k", b"q"])])
    # The same key after other events than the leader's: this replica's history of the node has a gap.
    mark = ProgressMark(b"k", NOW + 1.5, 3, before=(b"m", b"n"))
    assert keys(buffer.after({"A": mark}, tolerance=2.0)) == ["q"]


def test_a_mark_keeps_its_context_through_json():
    mark = ProgressMark(b"c", NOW, 3, before=(b"a", b"\xff\x00"))
    assert ProgressMark.from_json(mark.to_json()) == mark
