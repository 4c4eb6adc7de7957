"""Which events are finished, per node: the progress marks move only past events finished in arrival order."""

from __future__ import annotations

from expiryd.completion import Completion
from expiryd.events import Expiration
from expiryd.replay import ProgressMark


def test_marks_move_only_past_events_finished_in_arrival_order():
    marks: dict[str, ProgressMark] = {}
    completion = Completion(term=4, marks=marks)
    first, second, third = (completion.add(Expiration(key, "n:1", 1.0)) for key in (b"a", b"b", b"c"))
    other = completion.add(Expiration(b"x", "n:2", 1.0))
    completion.finish([second, other])
    assert set(marks) == {"n:2"}
    completion.finish([first])
    assert marks["n:1"] == ProgressMark(b"b", 1.0, 4)
    completion.finish([third])
    assert marks["n:1"].key == b"c"
    assert completion.unfinished() == 0


def test_a_closed_completion_moves_no_marks():
    marks: dict[str, ProgressMark] = {}
    completion = Completion(term=4, marks=marks)
    pending = completion.add(Expiration(b"a", "n:1", 1.0))
    completion.close()
    completion.finish([pending])
    assert marks == {} and not completion.changed
