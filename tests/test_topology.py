"""Reading CLUSTER NODES: which nodes are usable primaries, their replicas and the slots they serve."""

from __future__ import annotations

from expiryd.connections import NodeAddress
from expiryd.topology import ClusterView, choose_view, disputes, parse_cluster_nodes

CLUSTER_NODES = """\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 slave 292f 0 1426238316232 5 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed]
a1b2 127.0.0.1:30006@40006 master - 0 0 6 connected
"""


def test_primaries_exclude_failed_nodes_and_include_slotless_ones():
    view = ClusterView(nodes=parse_cluster_nodes(CLUSTER_NODES), answered_by=NodeAddress("127.0.0.1", 30001))
    assert view.primaries == {NodeAddress("127.0.0.1", p) for p in (30001, 30002, 30006)}
    assert view.replicas_of(NodeAddress("127.0.0.1", 30001)) == [NodeAddress("127.0.0.1", 30004)]
    assert view.slot_count(NodeAddress("127.0.0.1", 30001)) == 5461


def test_slot_owners_follow_the_primaries_slot_ranges():
    nodes = parse_cluster_nodes(
        "a 127.0.0.1:7000@17000 master - 0 0 1 connected 0-5460\n"
        "b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [5461->-c]\n"
        "c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383\n"
    )
    owners = ClusterView(nodes=nodes, answered_by=NodeAddress("127.0.0.1", 7000)).slot_owners()
    assert owners[0] == owners[5460] == NodeAddress("127.0.0.1", 7000)
    assert owners[5461] == owners[10922] == NodeAddress("127.0.0.1", 7001)
    assert owners[10923] is None and owners[16383] is None  # its primary failed


# No single answer shrinks the cluster (see expiryd.topology)

_HEALTHY = (
    "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-8191\n"
    "b1 127.0.0.1:7001@17001 master - 0 0 2 connected 8192-16383\n"
    "c1 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n"
)
_RESET = "c1 127.0.0.1:7002@17002 myself,master - 0 0 0 connected\n"
_FAILED_OVER = (
    "a1 127.0.0.1:7000@17000 master,fail - 0 0 1 connected\n"
    "b1 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 8192-16383\n"
    "c1 127.0.0.1:7002@17002 master - 0 0 3 connected 0-8191\n"
)


def _view_of(text: str, port: int) -> ClusterView:
    return ClusterView(nodes=parse_cluster_nodes(text), answered_by=NodeAddress("127.0.0.1", port))


def test_an_answer_that_leaves_primaries_unlisted_is_disputed():
    assert disputes(_view_of(_RESET, 7002), _view_of(_HEALTHY, 7000))


def test_a_failover_that_lists_the_failed_primary_is_not_disputed():
    assert not disputes(_view_of(_FAILED_OVER, 7001), _view_of(_HEALTHY, 7000))


def test_the_view_most_nodes_give_wins_a_dispute():
    views = [_view_of(_RESET, 7002), _view_of(_HEALTHY, 7000), _view_of(_HEALTHY, 7001)]
    assert choose_view(views) is views[1]


def test_among_single_answers_the_one_serving_most_slots_wins():
    views = [_view_of(_RESET, 7002), _view_of(_FAILED_OVER, 7001)]
    assert choose_view(views) is views[1]
