"""Coverage: a replica leads when its history reaches back past the marks, or when none reaches further."""

from __future__ import annotations

import asyncio
import math
import time

from expiryd.coverage import (
    Coverage,
    CoverageStore,
    Shortfall,
    another_process_publishes,
    covered_elsewhere,
    may_lead,
    shortfall,
)
from expiryd.progress import ProgressMark

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


def test_a_report_survives_its_json_form():
    report = Coverage(
        replica="r-1", written_at=1.5, since={"10.0.0.7:6379": 2.25, "10.0.0.8:6379": None}, instance="a1b2"
    )
    assert Coverage.from_json("r-1", report.to_json()) == report


def test_a_report_of_an_older_version_reads_with_no_instance():
    assert Coverage.from_json("1", '{"written_at": 1.5, "since": {}}').instance == ""


def instance_report(instance: str, at: float) -> Coverage:
    return Coverage(replica="1", written_at=at, since={}, instance=instance)


def test_another_process_that_keeps_publishing_under_this_id_is_a_live_twin():
    assert another_process_publishes(instance_report("b", 10.0), instance_report("b", 11.0), instance="a")


def test_a_report_that_stopped_moving_is_a_crashed_predecessor_not_a_twin():
    assert not another_process_publishes(instance_report("b", 10.0), instance_report("b", 10.0), instance="a")


def test_this_processs_own_reports_are_no_twin():
    assert not another_process_publishes(instance_report("a", 10.0), instance_report("a", 11.0), instance="a")


def test_no_report_under_this_id_is_no_twin():
    assert not another_process_publishes(None, None, instance="a")


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


def test_a_second_process_with_a_live_replica_id_refuses_to_start_with_one_line(shared_cluster, config_for, spawn):
    config = config_for(shared_cluster)
    first = spawn("1", config)
    first.wait_ready()
    second = spawn("1", config)
    assert second.process.wait(timeout=30) == 2
    lines = second.stderr_path.read_text().splitlines()
    assert lines[-1].startswith("expiryd: config error: ") and "replica id '1' is already live" in lines[-1]
    assert first.running


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


class CoverageHash:
    """One master's coverage hash, in memory."""

    def __init__(self, reports: list[Coverage]) -> None:
        self.fields = {report.replica.encode(): report.to_json().encode() for report in reports}

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.fields)

    async def hdel(self, key: str, *fields: bytes) -> int:
        for field in fields:
            del self.fields[field]
        return len(fields)


def test_reports_crashed_replicas_left_an_hour_ago_are_deleted_and_live_ones_kept():
    now = 10_000.0
    master = CoverageHash([reported("gone", now - 3601.0), reported("stale", now - 10.0), reported("2", now - 0.5)])
    store = CoverageStore(masters=[master], key="{expiryd}:leader:coverage", interval=1.0)
    others = asyncio.run(store.others(replica="1", now=now))
    assert [report.replica for report in others] == ["2"]
    assert set(master.fields) == {b"stale", b"2"}


def test_this_ids_report_is_read_with_the_rest_of_the_hash():
    master = CoverageHash([reported("1", 5.0), reported("2", 6.0)])
    store = CoverageStore(masters=[master], key="{expiryd}:leader:coverage", interval=1.0)
    assert asyncio.run(store.report(replica="1")) == reported("1", 5.0)
    assert asyncio.run(store.report(replica="3")) is None
