"""The retry set: failed events waiting in Redis for their next attempt, a queue per key, claimed when taken, bounded.

Its scripts run on Redis and on Valkey.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from redis.asyncio.cluster import RedisCluster

from expiryd.devtools.localcluster import LocalCluster
from expiryd.events import HEXPIRED, Event
from expiryd.keys import retry_keys
from expiryd.retries import Parked, RetrySet

from .harness import SteadyStream, event_key, free_port, wait_for_single_leader, wait_until, wait_until_eligible
from .receiver import WebhookReceiver


def parked(key: bytes, *, due_at: float, failed_at: float = 100.0) -> Parked:
    event = Event(key, "n:1", 99.0, 3, "r1", None, False)
    return Parked.of(event, attempts=3, error="HTTP 503", failed_at=failed_at, due_at=due_at)


def test_a_parked_event_keeps_its_key_kind_node_and_times_through_json():
    event = Event(b"\xffkey", "n:1", 12.5, 3, "r1", None, False, HEXPIRED, 12.0, True)
    entry = Parked.of(event, attempts=3, error="HTTP 503", failed_at=13.0, due_at=20.0)
    assert Parked.from_json(entry.to_json(), due_at=20.0) == entry


def test_each_route_of_each_lock_name_has_its_own_hash_slot_for_all_its_keys():
    orders, sessions = retry_keys("{expiryd}:leader", "orders"), retry_keys("{expiryd}:leader", "sessions")
    tag = orders.due[orders.due.index("{") : orders.due.index("}") + 1]
    assert all(tag in name for name in (orders.firsts, orders.count, orders.ids, orders.queue_prefix))
    assert tag not in sessions.due
    assert retry_keys("{other}:leader", "orders") != orders


def with_retry_set(cluster: LocalCluster, scenario, *, max_entries: int = 100) -> None:
    async def main() -> None:
        async with RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port) as client:
            retries = RetrySet(client=client, keys=retry_keys(uuid.uuid4().hex, "orders"), max_entries=max_entries)
            await scenario(retries)

    asyncio.run(main())


def keys_of(queues) -> list[bytes]:
    return [queue.key for queue in queues]


def test_due_queues_are_taken_in_the_order_they_fell_due_and_claimed_until_the_claim_runs_out(
    shared_cluster_each_server,
):
    async def scenario(retries: RetrySet) -> None:
        later, sooner, future = parked(b"later", due_at=10.0), parked(b"sooner", due_at=5.0), parked(b"f", due_at=99.0)
        assert await retries.park([later, sooner, future]) == 3
        assert keys_of(await retries.take_due(now=20.0, limit=10, claim_for=60.0)) == [b"sooner", b"later"]
        assert await retries.take_due(now=21.0, limit=10, claim_for=60.0) == []  # claimed
        assert sorted(keys_of(await retries.take_due(now=100.0, limit=10, claim_for=60.0))) == [
            b"f",
            b"later",
            b"sooner",
        ]

    with_retry_set(shared_cluster_each_server, scenario)


def test_a_later_event_of_a_key_waits_behind_its_queue_and_both_are_taken_together_in_order(shared_cluster_each_server):
    async def scenario(retries: RetrySet) -> None:
        first, second = parked(b"k", due_at=50.0), parked(b"k", due_at=1.0)  # the second is due sooner alone
        await retries.park([first])
        assert await retries.held([b"k", b"other"]) == {b"k"}
        await retries.park([second])
        assert await retries.take_due(now=10.0, limit=10, claim_for=60.0) == []  # the key's time is the first's
        [queue] = await retries.take_due(now=60.0, limit=10, claim_for=60.0)
        assert [entry.id for entry in queue.entries] == [first.id, second.id]

    with_retry_set(shared_cluster_each_server, scenario)


def test_what_is_parked_behind_a_handled_queue_falls_due_at_once(shared_cluster_each_server):
    async def scenario(retries: RetrySet) -> None:
        await retries.park([parked(b"k", due_at=1.0)])
        [queue] = await retries.take_due(now=2.0, limit=10, claim_for=60.0)
        behind = parked(b"k", due_at=2.0)
        await retries.park([behind])  # while the first was being attempted
        await retries.done(queue, now=3.0)
        [rest] = await retries.take_due(now=3.0, limit=10, claim_for=60.0)
        assert [entry.id for entry in rest.entries] == [behind.id]
        await retries.done(rest, now=4.0)
        assert await retries.held([b"k"]) == set() and await retries.size() == 0

    with_retry_set(shared_cluster_each_server, scenario)


def test_a_failed_queue_keeps_its_new_attempt_counts_and_its_spent_head_leaves(shared_cluster_each_server):
    async def scenario(retries: RetrySet) -> None:
        head, tail = parked(b"k", due_at=1.0), parked(b"k", due_at=1.0)
        await retries.park([head, tail])
        [queue] = await retries.take_due(now=2.0, limit=10, claim_for=60.0)
        again = tail.failed_again(error="HTTP 500", due_at=5.0)
        await retries.failed(queue, spent=[head], again=[again], due_at=5.0)
        [later] = await retries.take_due(now=6.0, limit=10, claim_for=60.0)
        assert [(entry.id, entry.attempts, entry.error) for entry in later.entries] == [(tail.id, 4, "HTTP 500")]
        assert await retries.size() == 1

    with_retry_set(shared_cluster_each_server, scenario)


def test_the_set_holds_at_most_its_bound_parks_an_entry_once_and_reports_its_oldest_failure(shared_cluster_each_server):
    async def scenario(retries: RetrySet) -> None:
        entries = [parked(b"a", due_at=1.0, failed_at=50.0), parked(b"b", due_at=1.0, failed_at=40.0)]
        assert await retries.park(entries) == 2
        assert await retries.park([entries[0]]) == 1 and await retries.size() == 2  # already there: once
        assert await retries.park([parked(b"c", due_at=1.0)]) == 0
        assert await retries.oldest_failure() == 40.0
        for queue in await retries.take_due(now=2.0, limit=10, claim_for=60.0):
            await retries.done(queue, now=2.0)
        assert await retries.oldest_failure() is None and await retries.size() == 0

    with_retry_set(shared_cluster_each_server, scenario, max_entries=2)


OUTAGE = 5.0  # seconds of each: connection refused, then 503


def test_a_receiver_down_through_a_leader_kill_loses_nothing_and_dead_letters_nothing(
    shared_cluster, config_for, spawn
):
    port = free_port()
    answer = {"status": 503}
    prefix = f"outage-{uuid.uuid4().hex[:6]}"
    route = {
        "match": f"{prefix}:*",
        "name": "outage",
        "webhook": {"url": f"http://127.0.0.1:{port}/expired", "timeout": "1s"},
        # Short waits, so that the test is short: the defaults wait up to ten minutes between attempts.
        "retry": {"max_attempts": 1000, "backoff": "200ms", "max_backoff": "2s", "in_memory": 2},
    }
    dead_letters = f"{{{prefix}}}:dead-letter"
    config = config_for(shared_cluster, routes=[route], dead_letter={"stream": dead_letters})
    replicas = [spawn(str(n), config) for n in (1, 2)]
    for replica in replicas:
        replica.wait_ready()
    leader = wait_for_single_leader(replicas)
    wait_until_eligible(replicas)
    with contextlib.ExitStack() as stack:
        with SteadyStream(shared_cluster, prefix=prefix, rate=50) as stream:
            time.sleep(OUTAGE / 2)
            leader.kill()  # with events waiting in the retry set, and more arriving
            successor = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
            time.sleep(OUTAGE / 2)
            receiver = stack.enter_context(WebhookReceiver(port=port, respond=lambda request: answer["status"]))
            time.sleep(OUTAGE)
            answer["status"] = 200
        wait_until(
            lambda: set(stream.keys) <= {event_key(event) for event in receiver.events()},
            timeout=60,
            what="every key delivered once the receiver is back",
        )
    assert successor.metric("expiryd_events_processed_total", route="outage", outcome="parked") > 0
    assert successor.metric("expiryd_events_processed_total", route="outage", outcome="dead_lettered") == 0
    with shared_cluster.client() as client:
        assert client.xlen(dead_letters) == 0
