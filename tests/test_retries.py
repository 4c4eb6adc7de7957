"""The retry set: failed events waiting in Redis for their next attempt, claimed when taken, bounded."""

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
    assert Parked.from_json(entry.id, entry.to_json(), due_at=20.0) == entry


def test_each_route_of_each_lock_name_has_its_own_hash_slot_for_its_three_keys():
    orders, sessions = retry_keys("{expiryd}:leader", "orders"), retry_keys("{expiryd}:leader", "sessions")
    assert len({orders.due, orders.entries, orders.firsts, sessions.due}) == 4
    tag = orders.due[orders.due.index("{") : orders.due.index("}") + 1]
    assert tag in orders.entries and tag in orders.firsts and tag not in sessions.due
    assert retry_keys("{other}:leader", "orders") != orders


def with_retry_set(cluster: LocalCluster, scenario, *, max_entries: int = 100) -> None:
    async def main() -> None:
        async with RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port) as client:
            retries = RetrySet(client=client, keys=retry_keys(uuid.uuid4().hex, "orders"), max_entries=max_entries)
            await scenario(retries)

    asyncio.run(main())


def test_due_entries_are_taken_in_the_order_they_fell_due_and_claimed_until_the_claim_runs_out(shared_cluster):
    async def scenario(retries: RetrySet) -> None:
        later, sooner, future = parked(b"later", due_at=10.0), parked(b"sooner", due_at=5.0), parked(b"f", due_at=99.0)
        assert await retries.park([later, sooner, future]) == 3
        taken = await retries.take_due(now=20.0, limit=10, claim_for=60.0)
        assert [entry.expiration.key for entry in taken] == [b"sooner", b"later"]
        assert await retries.take_due(now=21.0, limit=10, claim_for=60.0) == []  # claimed
        again = await retries.take_due(now=100.0, limit=10, claim_for=60.0)
        assert sorted(entry.expiration.key for entry in again) == [b"f", b"later", b"sooner"]

    with_retry_set(shared_cluster, scenario)


def test_a_rescheduled_entry_keeps_its_new_attempt_count_and_a_done_one_is_gone(shared_cluster):
    async def scenario(retries: RetrySet) -> None:
        first, second = parked(b"a", due_at=1.0), parked(b"b", due_at=1.0)
        await retries.park([first, second])
        await retries.reschedule([first.failed_again(error="HTTP 500", due_at=2.0)])
        await retries.done([second.id])
        await retries.reschedule([second.failed_again(error="late", due_at=2.0)])  # finished: stays finished
        [entry] = await retries.take_due(now=3.0, limit=10, claim_for=60.0)
        assert (entry.expiration.key, entry.attempts, entry.error) == (b"a", 4, "HTTP 500")
        assert await retries.size() == 1

    with_retry_set(shared_cluster, scenario)


def test_the_set_holds_at_most_its_bound_and_reports_its_oldest_failure(shared_cluster):
    async def scenario(retries: RetrySet) -> None:
        entries = [parked(b"a", due_at=1.0, failed_at=50.0), parked(b"b", due_at=1.0, failed_at=40.0)]
        assert await retries.park(entries) == 2
        assert await retries.park([parked(b"c", due_at=1.0)]) == 0
        assert await retries.size() == 2
        assert await retries.oldest_failure() == 40.0
        await retries.done([entry.id for entry in entries])
        assert await retries.oldest_failure() is None

    with_retry_set(shared_cluster, scenario, max_entries=2)


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
