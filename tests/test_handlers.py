"""Handlers doing real work: a webhook receiver over real HTTP, Redis streams, Python callables.

Every test but the first (the log handler alone) runs a real expiryd replica
against the shared cluster, with a lock, keys and streams of its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster

from expiryd.devtools.localcluster import LocalCluster
from expiryd.events import Event
from expiryd.handlers import LogHandler, StreamHandler

from .harness import event_key, expire_keys, wait_for_single_leader, wait_until, wait_until_eligible
from .receiver import Request, WebhookReceiver

FAST_RETRY = {"max_attempts": 3, "backoff": "20ms", "max_backoff": "100ms"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_log_handler_writes_one_json_line_per_event(tmp_path):
    path = tmp_path / "events.jsonl"
    handler = LogHandler(path=str(path))
    asyncio.run(handler.handle([Event(b"a\nb", "n:1", 1.0, 1, "r"), Event(b"c", "n:1", 1.0, 1, "r")]))
    asyncio.run(handler.aclose())
    assert path.read_text().count("\n") == 2


def start_leader(
    spawn,
    config_for,
    cluster: LocalCluster,
    routes: list[dict[str, Any]],
    *,
    env: dict[str, str] | None = None,
    **overrides: Any,
):
    replica = spawn("1", config_for(cluster, routes=routes, **overrides), env=env)
    replica.wait_ready()
    wait_for_single_leader([replica])
    return replica


def stream_entries(cluster: LocalCluster, stream: str) -> list[dict[bytes, bytes]]:
    client = cluster.client()
    try:
        return [fields for _, fields in client.xrange(stream)]
    finally:
        client.close()


def dead_letter_config() -> dict[str, str]:
    return {"stream": f"{{{unique('dlq')}}}:dead-letter"}


def test_webhook_receives_every_event_in_per_key_order_with_a_valid_signature(
    shared_cluster, config_for, spawn, tmp_path: Path
):
    secret = "correct horse battery staple"
    (tmp_path / "secret").write_text(secret + "\n")
    prefix = unique("hook")
    keys = [f"{prefix}:{i}".encode() for i in range(10)]
    rounds = 5
    with WebhookReceiver(delay=0.05) as receiver:
        route = {
            "match": f"{prefix}:*",
            "name": "hook",
            "concurrency": 4,
            "batch": {"size": 3, "max_wait": "20ms"},
            "webhook": {"url": receiver.url, "secret_file": str(tmp_path / "secret")},
        }
        start_leader(spawn, config_for, shared_cluster, [route])
        client = shared_cluster.client()
        for _ in range(rounds):
            expire_keys(shared_cluster, keys, ttl_ms=50)
            time.sleep(0.2)
            for key in keys:
                client.exists(key)  # touching an expired key deletes it at once: every round expires every key
        client.close()
        wait_until(lambda: len(receiver.events()) >= rounds * len(keys), timeout=20, what="every event delivered")

        for request in receiver.requests:
            expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
            assert request.headers["x-expiryd-signature"] == expected
            assert request.headers["x-expiryd-term"] == str(request.events[0]["term"])
            assert set(request.document) == {"events"}
        arrivals: dict[bytes, list[float]] = {}
        for event in receiver.events():
            # due_at when the schedule learned the key's due time before its 50 ms ran out.
            assert set(event) - {"due_at"} == {"key", "kind", "node", "term", "replica", "received_at"}
            assert event.get("due_at", 0.0) <= event["received_at"]
            arrivals.setdefault(event_key(event), []).append(event["received_at"])
    assert sorted(arrivals) == sorted(keys)
    for key, times in arrivals.items():
        assert len(times) == rounds, key
        assert times == sorted(times), f"{key!r} delivered out of order"


def test_a_receiver_that_fails_then_recovers_gets_the_event_retried(shared_cluster, config_for, spawn):
    key = unique("flaky").encode()
    with WebhookReceiver(respond=lambda request: 503 if request.number <= 2 else 200) as receiver:
        route = {
            "match": key.decode(),
            "name": "flaky",
            "retry": {**FAST_RETRY, "max_attempts": 5},
            "webhook": {"url": receiver.url},
        }
        replica = start_leader(spawn, config_for, shared_cluster, [route], dead_letter=dead_letter_config())
        expire_keys(shared_cluster, [key])
        wait_until(
            lambda: [event_key(e) for e in receiver.events()] == [key],
            timeout=15,
            what="the event delivered on the third attempt",
        )
        assert [request.status for request in receiver.requests] == [503, 503, 200]
    assert replica.metric("expiryd_events_processed_total", route="flaky", outcome="retried") == 2
    assert replica.metric("expiryd_events_processed_total", route="flaky", outcome="ok") == 1
    assert replica.metric("expiryd_handler_attempts_total", route="flaky", result="error") == 2
    assert replica.metric("expiryd_events_processed_total", route="flaky", outcome="dead_lettered") == 0


def dead_letter_one_key(spawn, config_for, cluster: LocalCluster, *, status: int, route_name: str):
    """Expire one key whose webhook always answers ``status``; return its dead-letter entry, the calls, the replica."""
    key = unique(route_name).encode()
    dead_letter = dead_letter_config()
    with WebhookReceiver(respond=lambda request: status) as receiver:
        route = {"match": key.decode(), "name": route_name, "retry": FAST_RETRY, "webhook": {"url": receiver.url}}
        replica = start_leader(spawn, config_for, cluster, [route], dead_letter=dead_letter)
        expire_keys(cluster, [key])
        wait_until(lambda: stream_entries(cluster, dead_letter["stream"]), timeout=15, what="a dead-letter entry")
        calls = len(receiver.requests)
    (entry,) = stream_entries(cluster, dead_letter["stream"])
    assert entry[b"key"] == key
    return entry, calls, replica


def test_a_receiver_that_always_fails_sends_the_event_to_the_dead_letter_stream(shared_cluster, config_for, spawn):
    entry, calls, replica = dead_letter_one_key(spawn, config_for, shared_cluster, status=500, route_name="down")
    assert calls == 3
    assert entry[b"route"] == b"down"
    assert entry[b"error"] == b"HTTP 500"
    assert entry[b"attempts"] == b"3"
    assert int(entry[b"term"]) >= 1
    assert replica.metric("expiryd_events_processed_total", route="down", outcome="dead_lettered") == 1
    assert replica.logged("events dead-lettered")


def test_a_400_response_goes_straight_to_the_dead_letter_stream(shared_cluster, config_for, spawn):
    entry, calls, replica = dead_letter_one_key(spawn, config_for, shared_cluster, status=400, route_name="refused")
    assert calls == 1
    assert (entry[b"error"], entry[b"attempts"]) == (b"HTTP 400", b"1")
    assert replica.metric("expiryd_events_processed_total", route="refused", outcome="retried") == 0


def test_stream_entries_carry_the_documented_fields(shared_cluster, config_for, spawn):
    prefix = unique("job")
    stream = f"{{{prefix}}}:expired"
    keys = [f"{prefix}:{i}".encode() for i in range(5)]
    route = {"match": f"{prefix}:*", "name": "jobs", "stream": {"name": stream}}
    start_leader(spawn, config_for, shared_cluster, [route])
    expire_keys(shared_cluster, keys)

    wait_until(
        lambda: len(stream_entries(shared_cluster, stream)) == len(keys), timeout=15, what="one stream entry per event"
    )
    entries = stream_entries(shared_cluster, stream)
    assert sorted(entry[b"key"] for entry in entries) == sorted(keys)
    for entry in entries:
        assert set(entry) == {b"key", b"kind", b"node", b"term", b"replica", b"received_at", b"due_at"}
        assert entry[b"kind"] == b"expired"
        assert float(entry[b"due_at"]) <= float(entry[b"received_at"])
        assert entry[b"replica"] == b"1"
        assert int(entry[b"term"]) >= 1
        assert float(entry[b"received_at"]) > 1.7e9
        assert entry[b"node"].decode() in {node.address for node in shared_cluster.nodes}


def test_sync_and_async_python_callables_get_the_events(shared_cluster, config_for, spawn, tmp_path: Path):
    out = tmp_path / "calls.jsonl"
    prefix = unique("py")
    routes = [
        {"match": f"{prefix}:sync:*", "name": "sync", "python": "tests.callables:record_sync"},
        {"match": f"{prefix}:async:*", "name": "async", "python": "tests.callables:record_async"},
    ]
    start_leader(spawn, config_for, shared_cluster, routes, env={"EXPIRYD_TEST_OUT": str(out)})
    keys = [f"{prefix}:sync:1".encode(), f"{prefix}:sync:2".encode(), f"{prefix}:async:1".encode()]
    expire_keys(shared_cluster, keys)

    def calls() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    wait_until(lambda: len(calls()) == 3, timeout=15, what="three calls")
    by_key = {event_key(call): call for call in calls()}
    assert by_key[keys[0]]["handler"] == by_key[keys[1]]["handler"] == "sync"
    assert by_key[keys[2]]["handler"] == "async"
    # A sync function runs in a worker thread; a coroutine function on the event loop's thread.
    assert by_key[keys[0]]["thread"] != "MainThread"
    assert by_key[keys[2]]["thread"] == "MainThread"


def test_payload_is_fetched_and_deleted_once_handled_or_dead_lettered(shared_cluster_each_server, config_for, spawn):
    prefix = unique("order")
    delivered, refused, bare = (f"{prefix}:{{{n}}}".encode() for n in ("7", "8", "9"))
    dead_letter = dead_letter_config()
    client = shared_cluster_each_server.client()
    client.set(delivered + b":payload", b'{"amount": 12}')
    client.set(refused + b":payload", b'{"amount": 99}')

    def respond(request: Request) -> int:
        return 400 if any(event_key(e) == refused for e in request.events) else 200

    with WebhookReceiver(respond=respond) as receiver:
        route = {
            "match": f"{prefix}:*",
            "name": "orders",
            "payload": "{key}:payload",
            "batch": {"size": 1},
            "retry": FAST_RETRY,
            "webhook": {"url": receiver.url},
        }
        start_leader(spawn, config_for, shared_cluster_each_server, [route], dead_letter=dead_letter)
        expire_keys(shared_cluster_each_server, [delivered, refused, bare])
        wait_until(
            lambda: len(receiver.events()) == 2 and stream_entries(shared_cluster_each_server, dead_letter["stream"]),
            timeout=15,
            what="two deliveries and one dead-letter",
        )
        by_key = {event_key(event): event for event in receiver.events()}
    assert by_key[delivered]["payload"] == '{"amount": 12}'
    assert by_key[bare]["payload"] is None
    wait_until(lambda: client.exists(delivered + b":payload") == 0, timeout=5, what="the payload key deleted")
    # The dead-letter entry holds the payload, and a companion left behind would be swept and fail again.
    wait_until(lambda: client.exists(refused + b":payload") == 0, timeout=5, what="the dead-lettered payload deleted")
    (entry,) = stream_entries(shared_cluster_each_server, dead_letter["stream"])
    assert (entry[b"key"], entry[b"payload"]) == (refused, b'{"amount": 99}')
    client.close()


def test_a_slow_handler_keeps_its_queue_bounded_and_counts_what_it_sheds(shared_cluster, config_for, spawn):
    prefix = unique("slow")
    keys = [f"{prefix}:{i}".encode() for i in range(1000)]
    depths: list[float] = []
    merged_depths: list[float] = []
    with WebhookReceiver(delay=0.1) as receiver:
        route = {
            "match": f"{prefix}:*",
            "name": "slow",
            "queue_size": 50,
            "batch": {"size": 10},
            "webhook": {"url": receiver.url},
        }
        replica = start_leader(
            spawn, config_for, shared_cluster, [route], pipeline={"overflow_wait": "1s", "queue_size": 100}
        )
        expire_keys(shared_cluster, keys, ttl_ms=100)

        def settled() -> bool:
            depths.append(replica.metric("expiryd_route_queue_depth", route="slow"))
            merged_depths.append(replica.metric("expiryd_queue_depth"))
            ok = replica.metric("expiryd_events_processed_total", route="slow", outcome="ok")
            dropped = replica.metric("expiryd_events_processed_total", route="slow", outcome="dropped")
            return ok + dropped == len(keys)

        wait_until(settled, timeout=60, interval=0.1, what="every event delivered or shed")
        delivered = len(receiver.events())
    dropped = replica.metric("expiryd_events_processed_total", route="slow", outcome="dropped")
    assert dropped > 0
    assert delivered == len(keys) - dropped
    assert max(depths) <= 50 and max(merged_depths) <= 100
    assert replica.metric("expiryd_events_dropped_total", reason="queue_full") == 0  # shed by the route alone
    assert replica.logged("route queue full and the subscriptions stuck behind it: dropping events")


def test_keys_that_are_not_utf8_come_through_every_handler(shared_cluster, config_for, spawn, tmp_path: Path):
    prefix = unique("bin")
    out = tmp_path / "calls.jsonl"
    stream = f"{{{prefix}}}:expired"

    def key(handler: str) -> bytes:
        return f"{prefix}:{handler}:".encode() + b'\xff\xfe\x00"\n{key}*'

    with WebhookReceiver() as receiver:
        routes = [
            {"match": f"{prefix}:log:*", "name": "log", "log": {}},
            {"match": f"{prefix}:hook:*", "name": "hook", "webhook": {"url": receiver.url}},
            {"match": f"{prefix}:stream:*", "name": "stream", "stream": {"name": stream}},
            {"match": f"{prefix}:py:*", "name": "py", "python": "tests.callables:record_sync"},
        ]
        replica = start_leader(spawn, config_for, shared_cluster, routes, env={"EXPIRYD_TEST_OUT": str(out)})
        expire_keys(shared_cluster, [key(h) for h in ("log", "hook", "stream", "py")])
        wait_until(
            lambda: receiver.events() and stream_entries(shared_cluster, stream) and out.exists() and replica.events(),
            timeout=15,
            what="every handler to get its key",
        )
        assert [event_key(e) for e in receiver.events()] == [key("hook")]
        assert receiver.events()[0]["key_b64"] == base64.b64encode(key("hook")).decode()
    assert [event_key(e) for e in replica.events()] == [key("log")]
    assert [entry[b"key"] for entry in stream_entries(shared_cluster, stream)] == [key("stream")]
    assert [event_key(json.loads(line)) for line in out.read_text().splitlines()] == [key("py")]


def test_a_lagging_leader_sigtermed_then_its_lagging_successor_sigkilled_lose_nothing(
    shared_cluster, config_for, spawn
):
    # Each leader lags: its receiver answers 503, so its events stay unfinished, retried, behind its marks.
    prefix = unique("lagging")
    first_keys = [f"{prefix}:a{i}".encode() for i in range(20)]
    second_keys = [f"{prefix}:b{i}".encode() for i in range(20)]
    receiver_down = True
    with WebhookReceiver(respond=lambda request: 503 if receiver_down else 200) as receiver:
        route = {
            "match": f"{prefix}:*",
            "name": "lagging",
            "webhook": {"url": receiver.url},
            # Every attempt in memory: the events stay unfinished in the leader, behind its marks.
            "retry": {"max_attempts": 1000, "backoff": "100ms", "max_backoff": "200ms", "in_memory": 1000},
        }
        config = config_for(shared_cluster, routes=[route], pipeline={"shutdown_grace": "1s"})
        replicas = [spawn(str(n), config) for n in (1, 2, 3)]
        for replica in replicas:
            replica.wait_ready()
        first = wait_for_single_leader(replicas)
        wait_until_eligible(replicas)
        expire_keys(shared_cluster, first_keys)
        wait_until(lambda: len(receiver.requests) >= 3, timeout=15, what="the first leader to be retrying")
        time.sleep(2.0)  # progress is recorded every second: it must not pass events still being retried
        first.terminate()  # its grace runs out with the events unfinished
        second = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
        expire_keys(shared_cluster, second_keys)
        requests_before = len(receiver.requests)
        wait_until(lambda: len(receiver.requests) > requests_before + 3, timeout=15, what="the successor retrying")
        time.sleep(2.0)
        second.kill()
        receiver_down = False
        third = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
        wait_until(
            lambda: {event_key(e) for e in receiver.events()} == set(first_keys + second_keys),
            timeout=20,
            what="every key delivered by the third leader",
        )
        assert {e["term"] for e in receiver.events()} == {int(third.metric("expiryd_leader_term"))}


def test_a_stream_batch_sent_to_a_node_that_does_not_own_the_stream_follows_moved_and_writes_each_entry_once(
    shared_cluster: LocalCluster,
):
    stream = f"{{{unique('moved')}}}:expired"
    owner = shared_cluster.node_for_key(stream)
    other = next(node for node in shared_cluster.primaries() if node.port != owner.port)
    events = [Event(f"order:{i}".encode(), "127.0.0.1:1", 1.0, 7, "replica-1") for i in range(50)]

    async def write_through_a_stale_slot_table() -> int:
        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", owner.port)])
        await client.initialize()
        # As after a failover or a resharding the client has not heard of yet.
        slot = client.keyslot(stream)
        client.nodes_manager.slots_cache[slot] = [client.get_node(host="127.0.0.1", port=other.port)]
        handler = StreamHandler(client=client, name=stream, maxlen=1_000, owns_client=True)
        await handler.handle(events)
        now_owner = client.nodes_manager.get_node_from_slot(slot).port
        await handler.aclose()
        return now_owner

    assert asyncio.run(write_through_a_stale_slot_table()) == owner.port
    expected = [
        {
            name.encode(): value if isinstance(value, bytes) else value.encode()
            for name, value in event.to_fields().items()
        }
        for event in events
    ]
    assert stream_entries(shared_cluster, stream) == expected
