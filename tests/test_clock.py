"""The cluster's clock: a node's offset from one TIME round trip, the best of a few, the median over nodes."""

from __future__ import annotations

import time

import pytest

from expiryd.clock import ClusterClock, sample_offset


def test_an_offset_is_the_node_time_less_the_midpoint_of_the_round_trip():
    sample = sample_offset(sent=100.0, node_time=102.5, received=101.0)
    assert sample.offset == 2.0 and sample.round_trip == 1.0


def test_the_sample_with_the_shortest_round_trip_wins():
    clock = ClusterClock()
    clock.observe("a", sample_offset(sent=0.0, node_time=5.0, received=4.0))  # slow: offset 3.0
    clock.observe("a", sample_offset(sent=10.0, node_time=12.05, received=10.1))  # quick: offset 2.0
    assert clock.node_offset("a") == pytest.approx(2.0)


def test_the_cluster_offset_is_the_median_of_the_nodes():
    clock = ClusterClock()
    for node, offset in (("a", 1.0), ("b", 2.0), ("c", 30.0)):
        clock.observe(node, sample_offset(sent=0.0, node_time=offset, received=0.0))
    assert clock.offset() == 2.0
    assert clock.node_lead("c") == 28.0


def test_now_runs_at_the_host_clock_plus_the_offset():
    clock = ClusterClock()
    clock.observe("a", sample_offset(sent=0.0, node_time=-2.0, received=0.0))
    assert clock.now() == pytest.approx(time.time() - 2.0, abs=0.05)


def test_before_any_sample_the_clock_is_the_hosts_and_says_so():
    clock = ClusterClock()
    assert not clock.measured and clock.offset() == 0.0 and clock.node_lead("a") == 0.0


def test_a_forgotten_node_no_longer_moves_the_clock():
    clock = ClusterClock()
    clock.observe("a", sample_offset(sent=0.0, node_time=4.0, received=0.0))
    clock.forget("a")
    assert clock.offset() == 0.0 and not clock.measured
