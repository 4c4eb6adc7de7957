"""Narrow unit tests of the pure parts: queue bound, routing, event encoding, completion, topology parsing."""

from __future__ import annotations

import asyncio
import base64

from expiryd.completion import Completion
from expiryd.connections import NodeAddress
from expiryd.eventqueue import EventQueue
from expiryd.events import Event, Expiration
from expiryd.handlers import LogHandler
from expiryd.notifications import merged_classes, missing_classes, required_classes
from expiryd.replay import ProgressMark
from expiryd.scheduler import redis_glob
from expiryd.topology import ClusterView, parse_cluster_nodes

CLUSTER_NODES = """\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 slave 292f 0 1426238316232 5 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed]
a1b2 127.0.0.1:30006@40006 master - 0 0 6 connected
"""


def expiration(key: bytes) -> Expiration:
    return Expiration(key=key, node="n:1", received_at=1.0)


def test_queue_refuses_what_does_not_fit_and_keeps_order():
    queue = EventQueue(capacity=3)
    assert queue.put([expiration(b"a"), expiration(b"b")]) == 0
    assert queue.put([expiration(b"c"), expiration(b"d"), expiration(b"e")]) == 2
    batch = asyncio.run(queue.get())
    assert [e.key for e in batch] == [b"a", b"b", b"c"]
    assert len(queue) == 0


def test_queue_get_waits_for_a_put():
    async def scenario() -> list[bytes]:
        queue = EventQueue(capacity=10)
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        queue.put([expiration(b"late")])
        return [e.key for e in await waiter]
    assert asyncio.run(scenario()) == [b"late"]


def test_event_json_uses_key_b64_only_for_non_utf8_keys():
    text = Event(b"order:1", "n:1", 1.5, 3, "r").to_json()
    binary = Event(b"\xff\x00", "n:1", 1.5, 3, "r").to_json()
    assert text == {"key": "order:1", "kind": "expired", "node": "n:1", "term": 3, "replica": "r",
                    "received_at": 1.5}
    assert "key" not in binary and base64.b64decode(binary["key_b64"]) == b"\xff\x00"


def test_log_handler_writes_one_json_line_per_event(tmp_path):
    path = tmp_path / "events.jsonl"
    handler = LogHandler(path=str(path))
    asyncio.run(handler.handle([Event(b"a\nb", "n:1", 1.0, 1, "r"), Event(b"c", "n:1", 1.0, 1, "r")]))
    asyncio.run(handler.close())
    assert path.read_text().count("\n") == 2


def test_notification_classes_are_added_and_existing_ones_kept():
    assert merged_classes("") == "Ex"
    assert merged_classes("Kg") == "KgEx"
    assert merged_classes("KEA") == "KEA"
    assert merged_classes("Ex") == "Ex"


def test_hash_class_is_required_only_for_hexpired_and_added_to_what_is_set():
    assert required_classes(schedule=False, kinds=["expired"]) == "Ex"
    assert required_classes(schedule=False, kinds=["expired", "hexpired"]) == "Exh"
    assert required_classes(schedule=True, kinds=["expired", "hexpired"]) == "Exgh"
    assert merged_classes("", "Exh") == "Exh"
    assert merged_classes("Kg$x", "Exh") == "Kg$xEh"
    assert merged_classes("KEA", "Exh") == "KEA"  # A already includes h and x


def test_the_event_kind_is_written_to_json_and_stream_fields():
    event = Event(b"cart:1", "n:1", 1.5, 3, "r", kind="hexpired")
    assert event.to_json()["kind"] == "hexpired"
    assert event.to_fields()["kind"] == "hexpired"
    assert Event(b"k", "n:1", 1.5, 3, "r").to_json()["kind"] == "expired"


def test_primaries_exclude_failed_nodes_and_include_slotless_ones():
    view = ClusterView(nodes=parse_cluster_nodes(CLUSTER_NODES), answered_by=NodeAddress("127.0.0.1", 30001))
    assert view.primaries == {NodeAddress("127.0.0.1", p) for p in (30001, 30002, 30006)}
    assert view.replicas_of(NodeAddress("127.0.0.1", 30001)) == [NodeAddress("127.0.0.1", 30004)]
    assert view.slot_count(NodeAddress("127.0.0.1", 30001)) == 5461


def test_put_within_waits_for_room_then_takes_the_rest_in_order():
    async def scenario() -> list[bytes]:
        queue = EventQueue(capacity=2)
        putting = asyncio.create_task(queue.put_within([expiration(k) for k in (b"a", b"b", b"c")], timeout=5))
        await asyncio.sleep(0.01)
        assert not putting.done()
        first = await queue.get()
        assert await putting == 0
        return [e.key for e in first + await queue.get()]
    assert asyncio.run(scenario()) == [b"a", b"b", b"c"]


def test_put_within_gives_up_after_its_timeout_and_reports_what_did_not_fit():
    async def scenario() -> int:
        queue = EventQueue(capacity=1)
        return await queue.put_within([expiration(b"a"), expiration(b"b"), expiration(b"c")], timeout=0.05)
    assert asyncio.run(scenario()) == 2


def test_a_busy_subscription_cannot_starve_another_waiting_for_room():
    async def scenario() -> list[bytes]:
        queue = EventQueue(capacity=1)
        queue.put([expiration(b"first")])

        async def busy_node() -> None:
            while True:
                await queue.put_within([expiration(b"busy")], timeout=5)
        busy = asyncio.create_task(busy_node())
        await asyncio.sleep(0)
        quiet = asyncio.create_task(queue.put_within([expiration(b"quiet")], timeout=5))
        await asyncio.sleep(0)
        taken: list[bytes] = []
        for _ in range(4):
            taken += [e.key for e in await queue.get()]
            await asyncio.sleep(0.01)
        busy.cancel()
        assert await quiet == 0
        return taken
    assert asyncio.run(scenario()) == [b"first", b"busy", b"quiet", b"busy"]


def test_room_goes_to_the_waiting_put_before_a_later_one():
    async def scenario() -> tuple[int, list[bytes]]:
        queue = EventQueue(capacity=1)
        queue.put([expiration(b"first")])
        waiting = asyncio.create_task(queue.put_within([expiration(b"waiting")], timeout=5))
        await asyncio.sleep(0)
        first = await queue.get()
        refused = queue.put([expiration(b"late")])
        await waiting
        return refused, [e.key for e in first + await queue.get()]
    assert asyncio.run(scenario()) == (1, [b"first", b"waiting"])


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


def test_events_carry_due_at_in_json_and_stream_fields_only_when_known():
    known = Event(b"order:1", "n:1", 1.5, 3, "r", due_at=1_795_377_857.6754)
    unknown = Event(b"order:1", "n:1", 1.5, 3, "r")
    assert known.to_json()["due_at"] == 1_795_377_857.675
    assert known.to_fields()["due_at"] == "1795377857.675"
    assert "due_at" not in unknown.to_json() and "due_at" not in unknown.to_fields()


def test_the_schedule_class_is_added_and_a_covers_it():
    assert merged_classes("Ex", "Exg") == "Exg"
    assert merged_classes("", "Exg") == "Exg"
    assert merged_classes("KEA", "Exg") == "KEA"
    assert missing_classes("KEx", "Exg") == "g"


def test_slot_owners_follow_the_primaries_slot_ranges():
    nodes = parse_cluster_nodes(
        "a 127.0.0.1:7000@17000 master - 0 0 1 connected 0-5460\n"
        "b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [5461->-c]\n"
        "c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383\n")
    owners = ClusterView(nodes=nodes, answered_by=NodeAddress("127.0.0.1", 7000)).slot_owners()
    assert owners[0] == owners[5460] == NodeAddress("127.0.0.1", 7000)
    assert owners[5461] == owners[10922] == NodeAddress("127.0.0.1", 7001)
    assert owners[10923] is None and owners[16383] is None  # its primary failed


def test_route_globs_become_scan_patterns_with_redis_negation_and_literal_backslashes():
    assert redis_glob("order:*") == b"order:*"
    assert redis_glob("job:[!x]?") == b"job:[^x]?"
    assert redis_glob("a\\b*") == b"a\\\\b*"
