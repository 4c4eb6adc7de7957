"""Which events are finished, per node: the progress marks move only past events finished in arrival order."""

from __future__ import annotations

from expiryd.completion import Completion
from expiryd.events import Expiration
from expiryd.progress import ProgressMark


def test_marks_move_only_past_events_finished_in_arrival_order():
    completion = Completion(term=4, marks={})
    first, second, third = (completion.add(Expiration(key, "n:1", 1.0)) for key in (b"a", b"b", b"c"))
    other = completion.add(Expiration(b"x", "n:2", 1.0))
    completion.finish([second, other])
    assert set(completion.take_marks() or {}) == {"n:2"}
    completion.finish([first])
    assert (completion.take_marks() or {})["n:1"] == ProgressMark(b"b", 1.0, 4, before=(b"a",))
    completion.finish([third])
    assert (completion.take_marks() or {})["n:1"].key == b"c"
    assert completion.unfinished() == 0


def test_a_mark_carries_the_keys_of_the_two_events_finished_before_it_on_its_node():
    completion = Completion(term=4, marks={})
    pendings = [completion.add(Expiration(key, "n:1", 1.0)) for key in (b"a", b"b", b"c", b"d")]
    completion.finish(pendings[:2])
    completion.finish(pendings[2:])  # the context reaches back across separate advances
    assert (completion.take_marks() or {})["n:1"].before == (b"b", b"c")


def test_a_closed_completion_moves_no_marks():
    completion = Completion(term=4, marks={})
    pending = completion.add(Expiration(b"a", "n:1", 1.0))
    assert completion.close() == {}
    completion.finish([pending])
    assert completion.take_marks() is None


def test_marks_are_taken_once_per_change_as_a_copy():
    completion = Completion(term=4, marks={})
    completion.finish([completion.add(Expiration(b"a", "n:1", 1.0))])
    taken = completion.take_marks()
    assert taken == {"n:1": ProgressMark(b"a", 1.0, 4)}
    taken.clear()
    assert completion.take_marks() is None
    assert completion.marks() == {"n:1": ProgressMark(b"a", 1.0, 4)}


def test_a_new_term_starts_from_the_marks_it_is_given_without_sharing_them():
    last = {"n:1": ProgressMark(b"a", 1.0, 3)}
    completion = Completion(term=4, marks=last)
    completion.finish([completion.add(Expiration(b"b", "n:1", 2.0))])
    assert last == {"n:1": ProgressMark(b"a", 1.0, 3)}
    assert completion.marks()["n:1"] == ProgressMark(b"b", 2.0, 4)


def test_an_idle_node_moves_up_to_the_given_time_with_a_mark_naming_no_event():
    completion = Completion(term=4, marks={"n:1": ProgressMark(b"a", 1.0, 3)})
    completion.quiet(["n:1", "n:2"], through=5.0, idle_for=2.0)
    assert completion.take_marks() == {"n:1": ProgressMark(b"", 5.0, 4), "n:2": ProgressMark(b"", 5.0, 4)}


def test_a_node_whose_mark_is_recent_keeps_the_mark_naming_its_event():
    completion = Completion(term=4, marks={"n:1": ProgressMark(b"a", 4.0, 3)})
    completion.quiet(["n:1"], through=5.0, idle_for=2.0)
    assert completion.take_marks() is None


def test_a_node_with_unfinished_events_is_not_quiet():
    completion = Completion(term=4, marks={})
    completion.add(Expiration(b"a", "n:1", 1.0))
    completion.quiet(["n:1"], through=5.0, idle_for=2.0)
    assert completion.take_marks() is None


def test_a_frozen_node_keeps_its_mark_before_the_gap_until_thawed():
    completion = Completion(term=4, marks={"n:1": ProgressMark(b"", 9.0, 4)})
    completion.freeze("n:1", heard_until=7.0)
    assert completion.marks()["n:1"] == ProgressMark(b"", 7.0, 4)  # a quiet mark past the gap moves back
    after = completion.add(Expiration(b"after-the-gap", "n:1", 12.0))
    completion.finish([after])
    completion.quiet(["n:1"], through=13.0, idle_for=2.0)
    assert completion.marks()["n:1"].received_at == 7.0
    completion.thaw("n:1")
    assert completion.marks()["n:1"].key == b"after-the-gap"


def test_a_mark_moved_back_by_a_freeze_returns_when_the_gap_is_accepted():
    completion = Completion(term=4, marks={})
    finished = completion.add(Expiration(b"heard-after-the-gap", "n:1", 12.0))
    completion.finish([finished])
    completion.freeze("n:1", heard_until=7.0)  # the break is learnt of after the event finished
    assert completion.take_marks() == {"n:1": ProgressMark(b"", 7.0, 4)}
    completion.thaw("n:1")
    assert completion.take_marks() == {"n:1": ProgressMark(b"heard-after-the-gap", 12.0, 4)}
