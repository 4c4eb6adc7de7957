"""The schedule's bookkeeping: what is due when, what a TTL change does, and its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expiryd.schedule import MAX_HORIZON, Admission, Schedule, _Index

NOW = 1_800_000_000.0


def schedule(**overrides: float) -> Schedule:
    settings = {"max_bytes": 1 << 20, "horizon": 3600.0, "keep_due_for": 15.0, **overrides}
    return Schedule(
        max_bytes=int(settings["max_bytes"]), horizon=settings["horizon"], keep_due_for=settings["keep_due_for"]
    )


def test_keys_come_due_in_order_of_due_time_and_not_before():
    s = schedule()
    s.add(b"b", NOW + 2.5, now=NOW)
    s.add(b"a", NOW + 0.25, now=NOW)
    s.add(b"c", NOW + 2.75, now=NOW)
    assert s.pop_due(NOW + 0.2) == []
    assert s.pop_due(NOW + 0.25) == [(b"a", NOW + 0.25)]
    assert s.pop_due(NOW + 3.0) == [(b"b", NOW + 2.5), (b"c", NOW + 2.75)]
    assert len(s) == 0


def test_a_key_added_for_a_second_already_opened_still_fires():
    s = schedule()
    s.add(b"later", NOW + 0.9, now=NOW)
    assert s.pop_due(NOW + 0.1) == []  # opens the current second
    s.add(b"soon", NOW + 0.2, now=NOW + 0.1)
    assert s.pop_due(NOW + 0.3) == [(b"soon", NOW + 0.2)]


def test_a_new_ttl_replaces_the_old_due_time():
    s = schedule()
    s.add(b"k", NOW + 1.0, now=NOW)
    s.add(b"k", NOW + 5.0, now=NOW)
    assert s.pop_due(NOW + 2.0) == []
    assert s.pop_due(NOW + 5.0) == [(b"k", NOW + 5.0)]


def test_a_shortened_ttl_fires_at_the_new_time_once():
    s = schedule()
    s.add(b"k", NOW + 5.0, now=NOW)
    s.add(b"k", NOW + 1.0, now=NOW)
    assert s.pop_due(NOW + 1.0) == [(b"k", NOW + 1.0)]
    assert s.pop_due(NOW + 6.0) == []


def test_a_discarded_key_never_fires():
    s = schedule()
    s.add(b"k", NOW + 1.0, now=NOW)
    s.discard(b"k")
    assert s.pop_due(NOW + 2.0) == []


def test_settle_returns_the_due_time_of_a_fired_key_and_forgets_it():
    s = schedule()
    s.add(b"k", NOW + 1.0, now=NOW)
    s.pop_due(NOW + 1.0)
    assert s.fired == 1
    assert s.settle(b"k") == NOW + 1.0
    assert s.fired == 0
    assert s.settle(b"k") is None


def test_settle_knows_a_key_that_redis_expired_before_it_was_fired():
    s = schedule()
    s.add(b"k", NOW + 1.0, now=NOW)
    assert s.settle(b"k") == NOW + 1.0
    assert s.pop_due(NOW + 2.0) == []


def test_overdue_lists_fired_keys_not_yet_seen_expiring():
    s = schedule()
    s.add(b"a", NOW + 1.0, now=NOW)
    s.add(b"b", NOW + 1.5, now=NOW)
    s.pop_due(NOW + 2.0)
    s.settle(b"a")
    assert s.overdue() == [(b"b", NOW + 1.5)]


def test_fired_keys_are_forgotten_after_keep_due_for():
    s = schedule(keep_due_for=10.0)
    s.add(b"deleted", NOW + 1.0, now=NOW)
    s.pop_due(NOW + 1.0)
    s.pop_due(NOW + 10.5)
    assert s.overdue() == [(b"deleted", NOW + 1.0)]
    s.pop_due(NOW + 11.5)
    assert s.overdue() == []


def test_a_key_due_beyond_the_horizon_is_refused_and_its_old_entry_dropped():
    s = schedule(horizon=60.0)
    s.add(b"k", NOW + 10.0, now=NOW)
    assert s.add(b"k", NOW + 61.0, now=NOW) is Admission.BEYOND_HORIZON
    assert len(s) == 0
    assert s.pop_due(NOW + 100.0) == []


def test_a_full_schedule_refuses_new_keys_but_takes_new_due_times_of_its_own():
    s = schedule()
    assert s.add(b"a", NOW + 1.0, now=NOW) is Admission.SCHEDULED
    s.max_bytes = s.nbytes
    assert s.add(b"b", NOW + 1.0, now=NOW) is Admission.FULL
    assert s.add(b"a", NOW + 2.0, now=NOW) is Admission.SCHEDULED
    assert s.pop_due(NOW + 3.0) == [(b"a", NOW + 2.0)]


def test_the_bytes_held_grow_with_the_keys_and_stay_far_below_a_python_dict():
    s = schedule(max_bytes=1 << 30)
    empty = s.nbytes
    for i in range(100_000):
        s.add(b"session:%017d" % i, NOW + 60.0 + i / 1000, now=NOW)  # 25-byte names
    per_key = (s.nbytes - empty) / 100_000
    assert 26 < per_key < 60


def test_a_fired_key_frees_its_bytes_for_a_new_key_once_keep_due_for_has_passed():
    s = schedule(keep_due_for=10.0)
    s.add(b"a", NOW + 1.0, now=NOW)
    s.max_bytes = s.nbytes
    s.pop_due(NOW + 2.0)
    s.settle(b"a")
    s.pop_due(NOW + 12.0)
    assert s.add(b"b", NOW + 15.0, now=NOW + 12.0) is Admission.SCHEDULED


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "settle", "discard", "pop"]),
            st.integers(min_value=0, max_value=40),
            st.integers(min_value=1, max_value=30_000),
        ),
        max_size=300,
    )
)
def test_the_schedule_agrees_with_a_dict_of_due_times(operations):
    """Whatever the mix of operations, each key fires at most once, at its latest due time, and never after settle."""
    s = schedule(keep_due_for=1e6)
    waiting: dict[bytes, float] = {}
    fired: dict[bytes, float] = {}
    now_ms = int(NOW * 1000)  # Redis gives due times in whole milliseconds
    for operation, number, millis in operations:
        key = b"key:%d" % number
        now = now_ms / 1000
        if operation == "add":
            due = (now_ms + millis) / 1000
            s.add(key, due, now=now)
            fired.pop(key, None)
            waiting[key] = due
        elif operation == "settle":
            expected = waiting.pop(key, None) or fired.pop(key, None)
            assert s.settle(key) == expected
        elif operation == "discard":
            s.discard(key)
            waiting.pop(key, None)
            fired.pop(key, None)
        else:
            now_ms += millis
            now = now_ms / 1000
            popped = s.pop_due(now, limit=1_000)
            expected = sorted((due, key) for key, due in waiting.items() if due <= now)
            assert sorted((due, key) for key, due in popped) == expected
            for _, key in expected:
                fired[key] = waiting.pop(key)
        assert len(s) == len(waiting)
        assert s.fired == len(fired)
    assert sorted(s.overdue()) == sorted(fired.items())


def test_a_horizon_longer_than_the_index_can_hold_is_refused():
    with pytest.raises(ValueError, match="horizon"):
        schedule(horizon=MAX_HORIZON + 1)


def test_keys_of_any_length_and_any_bytes_come_back_as_written():
    s = schedule()
    keys = [b"", b"\x00\xff binary \r\n", b"x" * 254, b"y" * 255, b"z" * 70_000]
    for n, key in enumerate(keys):
        s.add(key, NOW + 1.0 + n / 100, now=NOW)
    assert [key for key, _ in s.pop_due(NOW + 2.0)] == keys


def test_many_keys_fire_once_each_in_due_order_across_table_growth():
    s = schedule(max_bytes=1 << 30)
    for i in range(20_000):
        s.add(b"k%d" % i, NOW + 10.0 - i / 10_000, now=NOW)
    fired = s.pop_due(NOW + 11.0, limit=100_000)
    assert len(fired) == 20_000
    assert [due for _, due in fired] == sorted(due for _, due in fired)
    assert len(s) == 0 and s.fired == 20_000


def test_a_key_learned_again_at_the_same_due_time_is_listed_once():
    s = schedule()
    for _ in range(5):
        s.add(b"k", NOW + 3.0, now=NOW)
    assert s._listed == 1


def test_a_stale_entry_of_a_rescheduled_key_is_skipped_when_its_second_opens():
    s = schedule()
    s.add(b"k", NOW + 1.5, now=NOW)
    s.add(b"k", NOW + 4.5, now=NOW)
    assert s.pop_due(NOW + 2.0) == []
    assert len(s) == 1
    assert s.pop_due(NOW + 5.0) == [(b"k", NOW + 4.5)]


def test_due_times_a_month_apart_are_held_across_a_rebase():
    s = schedule(horizon=MAX_HORIZON)
    s.add(b"early", NOW + 1.0, now=NOW)
    later = NOW + 30 * 86_400.0
    s.add(b"late", later + 1.0, now=later)
    assert s.settle(b"late") == later + 1.0


def test_retry_fires_again_at_the_time_given_keeping_the_due_time():
    s = schedule()
    s.add(b"k", NOW + 1.0, now=NOW)
    s.pop_due(NOW + 1.0)
    s.retry(b"k", NOW + 1.0, at=NOW + 1.1)
    assert s.pop_due(NOW + 1.05) == []
    assert s.pop_due(NOW + 1.1) == [(b"k", NOW + 1.0)]


def test_pop_due_returns_at_most_limit_keys_and_keeps_the_rest():
    s = schedule()
    for i in range(10):
        s.add(b"k%d" % i, NOW + 1.0 + i / 100, now=NOW)
    assert len(s.pop_due(NOW + 2.0, limit=4)) == 4
    assert len(s.pop_due(NOW + 2.0, limit=100)) == 6


def test_next_due_is_no_later_than_the_earliest_key():
    s = schedule()
    assert s.next_due() is None
    s.add(b"k", NOW + 7.5, now=NOW)
    assert s.next_due() is not None and s.next_due() <= NOW + 7.5


def test_ttls_that_keep_changing_do_not_grow_the_listings_without_bound():
    s = schedule(horizon=MAX_HORIZON)
    for i in range(300_000):
        s.add(b"session", NOW + 100.0 + i, now=NOW)
    assert s._listed <= 2 * len(s) + 100_000
    assert s.pop_due(NOW + 300_100.0) == [(b"session", NOW + 100.0 + 299_999)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=11), st.integers(min_value=1, max_value=9)),
        max_size=200,
    )
)
def test_the_index_finds_every_key_it_holds_when_their_slots_collide(operations):
    """Keys whose home is one of the last two slots: runs wrap, and removal must close gaps across the end."""
    index = _Index(tables=1, slots=16)  # 11 keys fit without growing
    held: dict[int, int] = {}
    for put, number, millis in operations:
        fingerprint = 16 * number + 14 + number % 2
        due_ms = int(NOW * 1000) + millis
        if put:
            index.put(fingerprint, due_ms)
            held[fingerprint] = due_ms
        else:
            assert index.remove(fingerprint) == held.pop(fingerprint, 0)
        assert all(index.state(print_) == due for print_, due in held.items())
        assert index.live == len(held)
