"""Succession: a replica leads when its history reaches back past the marks, or when none reaches further."""

from __future__ import annotations

import math
import time

from expiryd.coverage import Coverage
from expiryd.progress import ProgressMark
from expiryd.succession import (
    Accept,
    Defer,
    HandOver,
    Hold,
    Lead,
    Shortfall,
    covered_elsewhere,
    decide_on_gaps,
    decide_to_lead,
    gaps_to_thaw_at_once,
    may_lead,
    shortfall,
)

from .harness import (
    SteadyStream,
    expire_keys,
    kill_subscriptions,
    start_replicas,
    wait_for_all,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
)

TOLERANCE = 2.0


def marks(**times: float) -> dict[str, ProgressMark]:
    return {node: ProgressMark(b"k", at, 1) for node, at in times.items()}


def replica(name: str, **since: float | None) -> Coverage:
    return Coverage(replica=name, written_at=0.0, since=since)


def test_the_shortfall_is_the_worst_primarys_start_less_its_mark():
    assert shortfall(replica("1", a=90.0, b=95.0), marks(a=100.0, b=100.0)) == Shortfall(0, -5.0)


def test_a_primary_without_a_mark_is_measured_against_the_oldest_mark():
    assert shortfall(replica("1", a=90.0, b=97.0), marks(a=100.0)) == Shortfall(0, -3.0)


def test_without_marks_on_any_current_primary_nothing_can_be_missed():
    assert shortfall(replica("1", a=90.0), marks(gone=100.0)) == Shortfall(0, -math.inf)


def test_primaries_not_subscribed_count_before_seconds():
    assert shortfall(replica("1", a=None, b=90.0), marks(a=100.0, b=100.0)) == Shortfall(1, -10.0)
    assert shortfall(replica("1", a=None, b=90.0), marks()) < shortfall(replica("2", a=None, b=None), marks())


def test_a_replica_that_knows_no_primary_yet_misses_everything():
    assert shortfall(replica("1"), marks(a=100.0)).missing > 1000


def test_a_replica_whose_history_reaches_past_the_marks_less_the_tolerance_may_lead():
    mine = replica("2", a=97.0)
    better = replica("1", a=10.0)
    assert may_lead(mine, others=[better], marks=marks(a=100.0), tolerance=TOLERANCE)


def test_a_replica_short_of_the_marks_defers_to_a_live_one_that_reaches_further():
    mine = replica("2", a=99.0)
    assert not may_lead(mine, others=[replica("1", a=50.0)], marks=marks(a=100.0), tolerance=TOLERANCE)


def test_when_no_replica_covers_the_marks_the_best_placed_leads():
    # After a restart of the whole deployment: every history starts after the marks.
    first, second = replica("1", a=200.0), replica("2", a=205.0)
    recorded = marks(a=100.0)
    assert may_lead(first, others=[second], marks=recorded, tolerance=TOLERANCE)
    assert not may_lead(second, others=[first], marks=recorded, tolerance=TOLERANCE)


def test_equally_placed_replicas_yield_to_the_lowest_name():
    recorded = marks(a=100.0)
    assert may_lead(replica("1", a=200.0), others=[replica("2", a=200.0)], marks=recorded, tolerance=TOLERANCE)
    assert not may_lead(replica("2", a=200.0), others=[replica("1", a=200.0)], marks=recorded, tolerance=TOLERANCE)


def test_a_replica_with_a_primary_down_defers_to_one_subscribed_to_all():
    assert not may_lead(
        replica("1", a=None, b=0.0),
        others=[replica("2", a=300.0, b=300.0)],
        marks=marks(a=100.0, b=100.0),
        tolerance=TOLERANCE,
    )


def test_every_replica_missing_the_same_primary_still_elects_one():
    one, two = replica("1", a=None, b=0.0), replica("2", a=None, b=50.0)
    recorded = marks(a=100.0, b=100.0)
    assert may_lead(one, others=[two], marks=recorded, tolerance=TOLERANCE)


def reported(name: str, at: float, **since: float | None) -> Coverage:
    return Coverage(replica=name, written_at=at, since=since)


def test_a_leader_may_hand_over_only_to_a_replica_that_covers_every_mark():
    recorded = marks(a=100.0, b=100.0)
    fresh = 200.0
    assert (
        covered_elsewhere(
            others=[reported("2", fresh, a=50.0, b=50.0)], marks=recorded, tolerance=TOLERANCE, after=150.0
        )
        is True
    )
    assert (
        covered_elsewhere(
            others=[reported("2", fresh, a=50.0, b=99.0)], marks=recorded, tolerance=TOLERANCE, after=150.0
        )
        is False
    )
    assert covered_elsewhere(others=[], marks=recorded, tolerance=TOLERANCE, after=150.0) is False


def test_a_report_older_than_the_gap_cannot_tell_whether_that_replica_heard_it():
    recorded = marks(a=100.0)
    stale = reported("2", 151.0, a=50.0)  # within the tolerance of the gap at 150: maybe before it, on its clock
    assert covered_elsewhere(others=[stale], marks=recorded, tolerance=TOLERANCE, after=150.0) is None
    assert (
        covered_elsewhere(
            others=[stale, reported("3", 160.0, a=10.0)], marks=recorded, tolerance=TOLERANCE, after=150.0
        )
        is True
    )


WARMUP = 8.0


def decide(mine: Coverage, *, others, recorded, deferring=None, now=1000.0):
    return decide_to_lead(
        mine=mine, others=others, marks=recorded, tolerance=TOLERANCE, warmup=WARMUP, deferring=deferring, now=now
    )


def test_a_replica_that_covers_the_marks_leads_with_nothing_unheard():
    assert decide(replica("1", a=50.0), others=[], recorded=marks(a=100.0)) == Lead(unheard=0.0)


def test_a_better_placed_replica_alive_makes_this_one_defer_from_now():
    verdict = decide(replica("2", a=150.0), others=[replica("1", a=50.0)], recorded=marks(a=100.0), now=1000.0)
    assert verdict == Defer(since=1000.0, unheard=50.0)


def test_a_replica_that_deferred_for_the_warmup_leads_anyway_and_counts_what_it_missed():
    deferring = Defer(since=1000.0, unheard=50.0)
    verdict = decide(
        replica("2", a=150.0), others=[replica("1", a=50.0)], recorded=marks(a=100.0), deferring=deferring, now=1008.0
    )
    assert verdict == Lead(unheard=50.0)


def test_a_deferral_keeps_its_start_while_the_warmup_runs():
    deferring = Defer(since=1000.0, unheard=50.0)
    verdict = decide(
        replica("2", a=150.0), others=[replica("1", a=50.0)], recorded=marks(a=100.0), deferring=deferring, now=1004.0
    )
    assert verdict == Defer(since=1000.0, unheard=50.0)


def test_unreadable_marks_defer_and_keep_the_last_known_shortfall():
    deferring = Defer(since=1000.0, unheard=3.0)
    assert decide(replica("2", a=150.0), others=None, recorded=None, deferring=deferring, now=1001.0) == deferring
    assert decide(replica("2", a=150.0), others=None, recorded=None, deferring=deferring, now=1009.0) == Lead(3.0)


def test_the_best_placed_replica_leads_at_once_and_counts_what_no_replica_heard():
    verdict = decide(replica("1", a=105.0), others=[replica("2", a=110.0)], recorded=marks(a=100.0))
    assert verdict == Lead(unheard=5.0)


def test_a_gap_another_replica_heard_is_handed_over():
    verdict = decide_on_gaps(frozen={"a": 150.0}, since={"a": 152.0, "b": 10.0}, heard_elsewhere=True)
    assert verdict == HandOver(nodes=("a",))


def test_a_gap_no_replica_heard_is_accepted_once_the_node_is_back_with_its_unheard_seconds():
    verdict = decide_on_gaps(frozen={"a": 150.0, "b": 151.0}, since={"a": 153.5, "b": None}, heard_elsewhere=False)
    assert verdict == Accept(unheard={"a": 3.5})  # b is still down: it stays frozen


def test_a_gap_whose_answer_is_older_than_it_waits():
    assert decide_on_gaps(frozen={"a": 150.0}, since={"a": 152.0}, heard_elsewhere=None) == Hold()


def test_a_frozen_node_that_is_no_longer_a_primary_thaws_at_once():
    assert gaps_to_thaw_at_once({"gone": 150.0, "a": 151.0}, {"a": None, "b": 10.0}) == ["gone"]


# On a real cluster, under load.

RATE = 200  # keys per second


def test_the_leaders_subscription_killed_three_times_loses_nothing(shared_cluster, config_for, spawn):
    config, replicas = start_replicas(shared_cluster, config_for, spawn)
    primaries = shared_cluster.primaries()
    with SteadyStream(shared_cluster, prefix="leader-cut", rate=RATE) as stream:
        for round_number in range(3):
            leader = wait_for_single_leader(replicas, timeout=15)
            wait_until_eligible(replicas)
            time.sleep(1.0)
            assert kill_subscriptions(primaries[round_number % len(primaries)], of=leader) >= 1
            time.sleep(1.0)
        wait_for_single_leader(replicas, timeout=15)
        time.sleep(1.0)
    counts = wait_for_all(replicas, stream.keys)

    duplicates = sum(counts[key] - 1 for key in stream.keys)
    handovers = sum(r.metric("expiryd_leader_history_gaps_total", outcome="handed_over") for r in replicas)
    print(f"{len(stream.keys)} keys, 3 cuts, {handovers:.0f} hand-overs, {duplicates} duplicates")
    assert handovers >= 1
    # Per cut, at most what the leader finished between its cut and its final record.
    assert duplicates <= 3 * RATE * 3


def test_a_follower_started_in_a_quiet_period_takes_over_with_nothing_unheard(shared_cluster, config_for, spawn):
    config = config_for(shared_cluster)
    leader = spawn("1", config)
    leader.wait_ready()
    wait_for_single_leader([leader])
    expire_keys(shared_cluster, [b"before-the-quiet:1"])
    wait_until(lambda: leader.events(), timeout=10, what="the last event before the quiet")
    time.sleep(3.0)  # nothing expires: the marks must move on with time, not with events
    follower = spawn("2", config)
    follower.wait_ready()
    wait_until(lambda: follower.metric("expiryd_leader_eligible") == 1, timeout=20, what="the follower eligible")
    leader.kill()
    wait_for_single_leader([follower])
    assert follower.metric("expiryd_unheard_seconds_total") == 0
    assert not [entry for entry in follower.logs() if entry.get("level") == "error"]
