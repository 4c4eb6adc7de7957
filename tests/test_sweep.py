"""The orphan sweep against a real cluster: companions left behind by expirations nobody heard.

Nothing subscribes here, so a key that expires is an orphan by construction.
Intervals and confirmation delays are a fraction of a second; each test's
routes match only its own keys, so the shared cluster's other keys pass by.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from expiryd.companions import Companions
from expiryd.config import RouteConfig, SweepConfig
from expiryd.connections import NodeAddress, RedisOptions
from expiryd.devtools.localcluster import LocalCluster, free_ports
from expiryd.events import Event, Expiration
from expiryd.keys import retry_keys
from expiryd.metrics import Metrics
from expiryd.payload import PayloadKeys
from expiryd.retries import Parked, RetrySet
from expiryd.routing import Route, Router
from expiryd.sweep import Look, Sweeper, judge, scan_pattern
from expiryd.topology import ClusterNodeInfo, ClusterView, Topology

from .faults import evict
from .harness import (
    SteadyStream,
    kill_subscriptions,
    leaders,
    start_replicas,
    wait_for_all,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
)

FAST = SweepConfig(interval=0.3, confirm_after=0.4, scan_rate=1_000_000, count=1_000)


class Term:
    def __init__(self, term: int | None = 1) -> None:
        self.value = term

    def term(self) -> int | None:
        return self.value


@dataclass
class Sweep:
    started: float
    leadership: Term
    metrics: Metrics
    in_flight: set[bytes] = field(default_factory=set)
    emitted: list[tuple[float, Route, list[Expiration]]] = field(default_factory=list)

    def keys(self) -> list[bytes]:
        return [expiration.key for _, _, batch in self.emitted for expiration in batch]

    # The leader gate, as the sweeper sees it.
    def keys_in_flight(self) -> set[bytes]:
        return set(self.in_flight)

    async def emit_swept(self, route: Route, expirations: list[Expiration]) -> None:
        self.emitted.append((time.monotonic(), route, expirations))

    def expirations(self) -> list[Expiration]:
        return [expiration for _, _, batch in self.emitted for expiration in batch]

    def sweeps(self, result: str) -> float:
        return self.metrics.registry.get_sample_value("expiryd_sweeps_total", {"result": result}) or 0.0

    async def first_complete(self) -> None:
        """Wait for the first sweep of every primary to end: its candidates have had their first look."""
        while self.sweeps("complete") < 1:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def sweeping(
    cluster: LocalCluster, routes: list[Route], *, settings: SweepConfig = FAST, term: int | None = 1
) -> AsyncIterator[Sweep]:
    options = RedisOptions()
    topology = Topology(seeds=[NodeAddress("127.0.0.1", cluster.nodes[0].port)], options=options)
    view = await topology.read()
    await topology.aclose()
    sweep = Sweep(started=time.monotonic(), leadership=Term(term), metrics=Metrics())

    sweeper = Sweeper(
        settings=settings,
        router=Router(routes),
        options=options,
        leadership=sweep.leadership,
        view=lambda: view,
        gate=sweep,
        metrics=sweep.metrics,
        now=time.time,
    )
    async with sweeper:
        yield sweep


def payload_route(name: str, pattern: str, template: str = "{key}:payload") -> Route:
    return Route(
        config=RouteConfig(match=pattern, name=name, payload=template),
        handler=None,  # type: ignore[arg-type]
        payload=PayloadKeys(template=template, client=None),
    )


def plain_route(name: str, pattern: str) -> Route:
    return Route(config=RouteConfig(match=pattern, name=name), handler=None)  # type: ignore[arg-type]


def prefix() -> str:
    return "sw" + uuid.uuid4().hex[:10]


def orphan(cluster: LocalCluster, key: bytes, payload: bytes = b"data") -> None:
    """A companion whose key has already gone, as when the key expired while no one listened."""
    client = cluster.client()
    client.set(key + b":payload", payload, ex=600)
    client.close()


# A key due at 1,000,000 ms whose companion lives a day (86,400,000 ms) longer.
DUE_MS, DAY_MS = 1_000_000, 86_400_000


def test_a_key_gone_after_its_due_time_with_its_companion_left_is_an_expiration_nobody_delivered():
    look = judge(exists=0, companion_expire_ms=DUE_MS + DAY_MS, node_now_ms=DUE_MS + 1, keep_for_ms=DAY_MS)
    assert look is Look.EXPIRED


def test_a_key_gone_before_its_due_time_was_removed_not_expired():
    look = judge(exists=0, companion_expire_ms=DUE_MS + DAY_MS, node_now_ms=DUE_MS - 5_000, keep_for_ms=DAY_MS)
    assert look is Look.REMOVED


def test_a_key_gone_at_the_very_millisecond_it_was_due_was_removed_since_redis_expires_only_after_it():
    assert judge(exists=0, companion_expire_ms=DUE_MS + DAY_MS, node_now_ms=DUE_MS, keep_for_ms=DAY_MS) is Look.REMOVED


def test_a_companion_without_a_ttl_or_an_unknown_node_time_tells_no_due_time_so_the_key_counts_as_expired():
    assert judge(exists=0, companion_expire_ms=-1, node_now_ms=5, keep_for_ms=DAY_MS) is Look.EXPIRED
    assert judge(exists=0, companion_expire_ms=DUE_MS + DAY_MS, node_now_ms=None, keep_for_ms=DAY_MS) is Look.EXPIRED


def test_a_live_key_a_deleted_companion_or_a_failed_check_is_nothing_to_deliver():
    assert (
        judge(exists=1, companion_expire_ms=DUE_MS + DAY_MS, node_now_ms=DUE_MS + 1, keep_for_ms=DAY_MS) is Look.NOTHING
    )
    assert judge(exists=0, companion_expire_ms=-2, node_now_ms=DUE_MS + 1, keep_for_ms=DAY_MS) is Look.NOTHING
    error = ConnectionError("node down")
    assert judge(exists=error, companion_expire_ms=error, node_now_ms=None, keep_for_ms=DAY_MS) is Look.NOTHING


def test_a_companion_whose_key_expired_is_emitted_once_marked_swept_after_the_confirmation(
    shared_cluster_each_server: LocalCluster,
) -> None:
    p = prefix()
    key = f"{p}:{{1}}".encode()
    client = shared_cluster_each_server.client()
    client.set(key + b":payload", b"data", ex=600)
    client.set(key, b"1", px=50)
    time.sleep(0.1)
    client.close()

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster_each_server, [payload_route("r", f"{p}:{{*}}")]) as sweep:
            await asyncio.sleep(2.0)  # several intervals: the companion stays, nothing deletes it
        return sweep

    sweep = asyncio.run(scenario())
    assert sweep.keys() == [key]
    at, route, [expiration] = sweep.emitted[0]
    assert route.name == "r"
    assert at - sweep.started >= FAST.confirm_after
    assert expiration.swept and expiration.kind == "expired"
    assert expiration.node == shared_cluster_each_server.node_for_key(key).address
    assert sweep.metrics.registry.get_sample_value("expiryd_swept_events_total", {"route": "r"}) == 1


def test_a_key_not_yet_expired_is_not_emitted(shared_cluster: LocalCluster) -> None:
    p = prefix()
    key = f"{p}:{{1}}".encode()

    async def scenario() -> Sweep:
        client = shared_cluster.client()
        client.set(key + b":payload", b"data", ex=600)
        client.set(key, b"1", ex=60)
        client.close()
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")]) as sweep:
            await asyncio.sleep(1.0)
        return sweep

    sweep = asyncio.run(scenario())
    assert sweep.sweeps("complete") >= 2
    assert sweep.emitted == []


def test_a_key_evicted_before_its_due_time_is_counted_not_delivered_while_one_that_expired_is(
    shared_cluster: LocalCluster,
) -> None:
    p = prefix()
    evicted, expired = f"{p}:{{1}}".encode(), f"{p}:{{1}}:expired".encode()
    node = shared_cluster.node_for_key(evicted)

    async def scenario() -> Sweep:
        async with RedisCluster(host="127.0.0.1", port=shared_cluster.nodes[0].port) as cluster:
            companions = Companions(client=cluster)
            await companions.schedule(evicted, b"due in ten minutes", ttl=600)
            # volatile-ttl evicts the keys with the shortest TTL first: the key (10 minutes), then the
            # filler (an hour), and the companion (a day longer than its key) last.
            evict(node, [evicted], policy="volatile-ttl", tag="1", filler_ttl=3600)
            assert await cluster.exists(evicted + b":payload") == 1
            await companions.schedule(expired, b"due now", ttl=0.05)
        await asyncio.sleep(0.1)
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}*")]) as sweep:
            await asyncio.sleep(1.5)  # several intervals and confirmations
        return sweep

    sweep = asyncio.run(scenario())
    assert sweep.keys() == [expired]
    removed = sweep.metrics.registry.get_sample_value("expiryd_keys_removed_before_due_total", {"route": "r"})
    assert removed == 1  # once per term, though every sweep finds it again
    with shared_cluster.client() as client:
        assert client.exists(evicted + b":payload") == 1  # left to expire, not deleted


def test_a_key_in_flight_is_not_emitted(shared_cluster: LocalCluster) -> None:
    p = prefix()
    key = f"{p}:{{1}}".encode()
    orphan(shared_cluster, key)

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")]) as sweep:
            sweep.in_flight.add(key)
            await asyncio.sleep(1.0)
        return sweep

    assert asyncio.run(scenario()).emitted == []


def test_a_key_whose_event_waits_in_its_routes_retry_set_is_not_emitted(shared_cluster: LocalCluster) -> None:
    p = prefix()
    waiting, orphaned = f"{p}:{{1}}".encode(), f"{p}:{{2}}".encode()
    orphan(shared_cluster, waiting)
    orphan(shared_cluster, orphaned)

    async def scenario() -> Sweep:
        async with RedisCluster(host="127.0.0.1", port=shared_cluster.nodes[0].port) as client:
            retries = RetrySet(client=client, keys=retry_keys(p, "r"), max_entries=10)
            event = Event(waiting, "n:1", 1.0, 1, "r1")
            await retries.park([Parked.of(event, attempts=3, error="HTTP 503", failed_at=1.0, due_at=1e12)])
            route = payload_route("r", f"{p}:{{*}}")
            route.retries = retries
            async with sweeping(shared_cluster, [route]) as sweep:
                await asyncio.sleep(1.5)  # several sweeps and confirmations
            return sweep

    assert asyncio.run(scenario()).keys() == [orphaned]  # the other is the retry worker's to send


def emitted_after_a_change_between_the_two_looks(cluster: LocalCluster, change: Callable[[Any, bytes], Any]) -> list:
    """What the sweep emits for an orphan when ``change(client, key)`` happens after its first look."""
    p = prefix()
    key = f"{p}:{{1}}".encode()
    orphan(cluster, key)
    settings = SweepConfig(interval=60, confirm_after=0.8, scan_rate=1_000_000)

    async def scenario() -> Sweep:
        async with sweeping(cluster, [payload_route("r", f"{p}:{{*}}")], settings=settings) as sweep:
            await sweep.first_complete()
            client = cluster.client()
            change(client, key)
            client.close()
            await asyncio.sleep(1.2)
        return sweep

    return asyncio.run(scenario()).emitted


def test_a_companion_deleted_before_the_confirmation_is_not_emitted(shared_cluster: LocalCluster) -> None:
    # Normal delivery finished between the two looks: the handler's success deleted it.
    assert (
        emitted_after_a_change_between_the_two_looks(
            shared_cluster, lambda client, key: client.delete(key + b":payload")
        )
        == []
    )


def test_a_companion_written_just_before_its_key_is_not_emitted(shared_cluster: LocalCluster) -> None:
    assert (
        emitted_after_a_change_between_the_two_looks(shared_cluster, lambda client, key: client.set(key, b"1", ex=60))
        == []
    )


def test_a_cancelled_key_is_never_swept(shared_cluster: LocalCluster) -> None:
    p = prefix()
    key = f"{p}:{{1}}"

    async def scenario() -> Sweep:
        client = RedisCluster(host="127.0.0.1", port=shared_cluster.nodes[0].port)
        companions = Companions(client=client)
        await companions.schedule(key, b"data", ttl=0.2)
        assert await companions.cancel(key)
        await client.aclose()
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")]) as sweep:
            await asyncio.sleep(1.0)
        return sweep

    assert asyncio.run(scenario()).emitted == []


def test_companions_of_non_payload_routes_and_of_no_route_are_ignored(shared_cluster: LocalCluster) -> None:
    p = prefix()
    plain = f"{p}:{{a1}}".encode()  # matched first by a route without payload
    unrouted = f"{p}x:{{1}}".encode()  # matched by no route
    other_template = f"{p}:{{b1}}".encode()  # its route's companions are named payload:{key}
    routed = f"{p}:{{c1}}".encode()
    for key in (plain, unrouted, other_template, routed):
        orphan(shared_cluster, key)
    routes = [
        plain_route("plain", f"{p}:{{a*}}"),
        payload_route("other", f"{p}:{{b*}}", template="payload:{key}"),
        payload_route("r", f"{p}:{{*}}"),
    ]

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, routes) as sweep:
            await asyncio.sleep(1.0)
        return sweep

    assert asyncio.run(scenario()).keys() == [routed]


def test_binary_keys_survive(shared_cluster: LocalCluster) -> None:
    p = prefix()
    key = p.encode() + b":{\xff\x00\x80*?[}"
    orphan(shared_cluster, key)

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:*")]) as sweep:
            await asyncio.sleep(1.0)
        return sweep

    assert asyncio.run(scenario()).keys() == [key]


def test_the_scan_covers_every_primary(shared_cluster: LocalCluster) -> None:
    p = prefix()
    owners = shared_cluster.slot_owners()
    by_node: dict[str, bytes] = {}
    for i in range(1000):
        key = f"{p}:{{{i}}}".encode()
        by_node.setdefault(owners.owner(key).address, key)
    assert len(by_node) == len(shared_cluster.primaries())
    for key in by_node.values():
        orphan(shared_cluster, key)

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")]) as sweep:
            await asyncio.sleep(1.0)
        return sweep

    sweep = asyncio.run(scenario())
    assert {expiration.node: expiration.key for expiration in sweep.expirations()} == by_node


def test_a_follower_does_not_sweep(shared_cluster: LocalCluster) -> None:
    p = prefix()
    orphan(shared_cluster, f"{p}:{{1}}".encode())

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")], term=None) as sweep:
            await asyncio.sleep(0.8)
        return sweep

    sweep = asyncio.run(scenario())
    assert sweep.emitted == [] and sweep.sweeps("complete") == 0


def test_a_candidate_of_a_former_term_is_not_emitted(shared_cluster: LocalCluster) -> None:
    p = prefix()
    key = f"{p}:{{1}}".encode()
    orphan(shared_cluster, key)
    settings = SweepConfig(interval=60, confirm_after=0.5, scan_rate=1_000_000)

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")], settings=settings) as sweep:
            await sweep.first_complete()
            sweep.leadership.value = None
            await asyncio.sleep(0.8)
        return sweep

    assert asyncio.run(scenario()).emitted == []


def test_a_new_term_delivers_an_orphan_again(shared_cluster: LocalCluster) -> None:
    p = prefix()
    key = f"{p}:{{1}}".encode()
    orphan(shared_cluster, key)

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")]) as sweep:
            while not sweep.emitted:
                await asyncio.sleep(0.01)
            sweep.leadership.value = 2
            await asyncio.sleep(1.0)
        return sweep

    assert asyncio.run(scenario()).keys() == [key, key]


def test_a_complete_sweep_sets_its_timestamp_and_counts_the_keys_it_scanned(shared_cluster: LocalCluster) -> None:
    p = prefix()
    for i in range(3):
        orphan(shared_cluster, f"{p}:{{{i}}}".encode())

    async def scenario() -> Sweep:
        async with sweeping(shared_cluster, [payload_route("r", f"{p}:{{*}}")]) as sweep:
            before = time.time()
            await sweep.first_complete()
            registry = sweep.metrics.registry
            assert registry.get_sample_value("expiryd_sweep_last_complete_timestamp_seconds") >= before
            assert registry.get_sample_value("expiryd_sweep_keys_scanned_total") >= 3
            assert registry.get_sample_value("expiryd_sweep_interval_seconds") == FAST.interval
        return sweep

    sweep = asyncio.run(scenario())
    assert sweep.metrics.registry.get_sample_value("expiryd_sweep_interval_seconds") == 0


# Pure logic


@pytest.mark.parametrize(
    ("template", "pattern"),
    [
        ("{key}:payload", b"*:payload"),
        ("payload:{key}", b"payload:*"),
        ("p[1]*?\\:{key}", b"p\\[1\\]\\*\\?\\\\:*"),
        ("{key}|{key}", b"*|*"),
    ],
)
def test_the_scan_pattern_is_the_template_with_its_literals_escaped(template: str, pattern: bytes) -> None:
    assert scan_pattern(PayloadKeys(template=template, client=None)) == pattern


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("{key}:payload", b"order:{42}"),
        ("payload:{key}", b"\xff\x00"),
        ("{key}:payload", b"a:payload"),
        ("<{key}|{key}>", b"x{key}y"),
        ("{key}:payload", b""),
    ],
)
def test_the_key_of_a_companion_is_the_one_it_was_named_for(template: str, key: bytes) -> None:
    payloads = PayloadKeys(template=template, client=None)
    assert payloads.key_of(payloads.key_for(key)) == key


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ("{key}:payload", b"order:{42}"),
        ("{key}:payload", b"order:{42}:payloa"),
        ("payload:{key}", b"order:{42}:payload"),
        ("<{key}|{key}>", b"<a|b>"),
        ("<{key}|{key}>", b"<ab>"),
    ],
)
def test_a_name_that_does_not_fit_the_template_has_no_key(template: str, name: bytes) -> None:
    assert PayloadKeys(template=template, client=None).key_of(name) is None


def test_a_swept_event_says_so_in_json_and_stream_fields() -> None:
    swept = Event(b"k", "n:1", 1.5, 3, "r", swept=True)
    assert swept.to_json()["swept"] is True
    assert swept.to_fields()["swept"] == "1"


def test_an_event_not_swept_carries_no_swept_field() -> None:
    event = Event(b"k", "n:1", 1.5, 3, "r")
    assert "swept" not in event.to_json()
    assert "swept" not in event.to_fields()


def test_a_sweep_that_cannot_reach_a_primary_fails_and_still_delivers_what_the_others_hold(
    shared_cluster: LocalCluster,
) -> None:
    p = prefix()
    key = f"{p}:{{1}}".encode()
    orphan(shared_cluster, key)

    async def scenario() -> Sweep:
        options = RedisOptions(connect_timeout=0.2, command_timeout=0.2)
        topology = Topology(seeds=[NodeAddress("127.0.0.1", shared_cluster.nodes[0].port)], options=options)
        real = await topology.read()
        await topology.aclose()
        dead = ClusterNodeInfo("dead", NodeAddress("127.0.0.1", free_ports(1)[0]), frozenset({"master"}), None, ())
        view = ClusterView(nodes=(*real.nodes, dead), answered_by=real.answered_by)
        sweep = Sweep(started=time.monotonic(), leadership=Term(1), metrics=Metrics())

        sweeper = Sweeper(
            settings=FAST,
            router=Router([payload_route("r", f"{p}:{{*}}")]),
            options=options,
            leadership=sweep.leadership,
            view=lambda: view,
            gate=sweep,
            metrics=sweep.metrics,
            now=time.time,
        )
        async with sweeper:
            deadline = time.monotonic() + 15
            while (sweep.sweeps("error") < 1 or not sweep.emitted) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return sweep

    sweep = asyncio.run(scenario())
    assert sweep.keys() == [key]
    assert sweep.sweeps("error") >= 1 and sweep.sweeps("complete") == 0
    assert sweep.metrics.registry.get_sample_value("expiryd_sweep_last_complete_timestamp_seconds") == 0


# End to end: expiryd replicas on a real cluster, under load, on a payload route.

RATE = 200  # keys per second
PAYLOAD_ROUTE = [{"match": "*", "name": "all", "payload": "{key}:payload", "log": {}}]
QUICK_SWEEP = {"interval": "3s", "confirm_after": "2s"}


def test_every_replica_killed_for_ten_seconds_loses_nothing_on_a_payload_route(shared_cluster, config_for, spawn):
    config, replicas = start_replicas(shared_cluster, config_for, spawn, routes=PAYLOAD_ROUTE, sweep=QUICK_SWEEP)
    wait_for_single_leader(replicas)
    with SteadyStream(shared_cluster, prefix="down", rate=RATE, payload="{key}:payload") as stream:
        time.sleep(2.0)
        for replica in replicas:
            replica.kill()
        time.sleep(10.0)
        written_while_down = len(stream.keys)
        restarted = [spawn(f"after{i}", config) for i in (1, 2, 3)]
        for replica in restarted:
            replica.wait_ready()
        time.sleep(2.0)
    counts = wait_for_all(replicas + restarted, stream.keys, timeout=60)

    swept = sum(r.metric("expiryd_swept_events_total", route="all") for r in restarted)
    duplicates = sum(counts[key] - 1 for key in stream.keys)
    print(
        f"{len(stream.keys)} keys ({written_while_down} by the end of the outage), {swept:.0f} swept, "
        f"{duplicates} duplicates"
    )
    assert swept >= 1000  # what expired in the 10 s nobody listened
    # At most what the killed leader had handled without deleting the companion yet: the batches in hand.
    assert duplicates <= RATE


def test_every_expiryd_connection_to_one_primary_killed_loses_nothing_on_a_payload_route_and_moves_no_lease(
    shared_cluster, config_for, spawn
):
    _, replicas = start_replicas(shared_cluster, config_for, spawn, routes=PAYLOAD_ROUTE, sweep=QUICK_SWEEP)
    leader = wait_for_single_leader(replicas)
    wait_until_eligible(replicas)
    with SteadyStream(shared_cluster, prefix="cut-all", rate=RATE, payload="{key}:payload") as stream:
        time.sleep(1.0)
        for _ in range(3):
            assert kill_subscriptions(shared_cluster.primaries()[0]) >= len(replicas)
            time.sleep(1.0)
    counts = wait_for_all(replicas, stream.keys, timeout=30)

    # Nobody heard the gaps: the leader keeps the lease, and counts what nobody heard.
    wait_until(
        lambda: leader.metric("expiryd_leader_history_gaps_total", outcome="uncovered") >= 1,
        timeout=15,
        what="the leader to accept a gap no replica heard",
    )
    assert leaders(replicas) == [leader]
    assert sum(r.metric("expiryd_leader_history_gaps_total", outcome="handed_over") for r in replicas) == 0
    assert leader.metric("expiryd_unheard_seconds_total") > 0
    print(
        f"{len(stream.keys)} keys, {sum(counts[k] - 1 for k in stream.keys)} duplicates, "
        f"{leader.metric('expiryd_swept_events_total', route='all'):.0f} swept"
    )
