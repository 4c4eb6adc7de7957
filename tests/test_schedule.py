"""The schedule's bookkeeping: what is due when, what a TTL change does, and its bounds."""

from __future__ import annotations

from expiryd.schedule import Admission, Schedule

NOW = 1_800_000_000.0


def schedule(**overrides: float) -> Schedule:
    settings = {"max_keys": 1000, "horizon": 3600.0, "keep_due_for": 15.0, **overrides}
    return Schedule(
        max_keys=int(settings["max_keys"]), horizon=settings["horizon"], keep_due_for=settings["keep_due_for"]
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
    s = schedule(max_keys=2)
    assert s.add(b"a", NOW + 1.0, now=NOW) is Admission.SCHEDULED
    assert s.add(b"b", NOW + 1.0, now=NOW) is Admission.SCHEDULED
    assert s.add(b"c", NOW + 1.0, now=NOW) is Admission.FULL
    assert s.add(b"a", NOW + 2.0, now=NOW) is Admission.SCHEDULED
    assert [key for key, _ in s.pop_due(NOW + 3.0)] == [b"b", b"a"]


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
    s = schedule(max_keys=10, horizon=1e9)
    for i in range(300_000):
        s.add(b"session", NOW + 100.0 + i, now=NOW)
    assert s._listed <= 2 * len(s) + 100_000
    assert s.pop_due(NOW + 300_100.0) == [(b"session", NOW + 100.0 + 299_999)]
