"""Leader election: one leader, fast takeover, step-down before the lease can expire, rising terms."""

from __future__ import annotations

import asyncio
import time

from pottery.exceptions import ExtendUnlockedLock
from redis.exceptions import ConnectionError as RedisConnectionError

from expiryd.config import ElectionConfig
from expiryd.election import Elector, propose_term
from expiryd.keys import term_key
from expiryd.leadership import TermSignal
from expiryd.metrics import Metrics

from .faults import evict
from .harness import (
    SteadyStream,
    expire_keys,
    leaders,
    lease_holder,
    wait_for_all,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
)

LEASE = 5.0
RETRY = 0.5


def start_three(cluster, config_for, spawn, **overrides):
    config = config_for(cluster, **overrides)
    replicas = [spawn(str(i), config) for i in (1, 2, 3)]
    for replica in replicas:
        replica.wait_ready()
    return replicas


def terms_in_order(replicas):
    became = [entry for r in replicas for entry in r.logged("became leader")]
    return [entry["term"] for entry in sorted(became, key=lambda e: e["ts"])]


def test_exactly_one_leader_among_three_replicas(shared_cluster, config_for, spawn):
    replicas = start_three(shared_cluster, config_for, spawn)
    wait_for_single_leader(replicas)
    for _ in range(20):
        assert len(leaders(replicas)) == 1
        time.sleep(0.1)
    assert sum(r.metric("expiryd_is_leader") for r in replicas) == 1


def test_sigkill_of_the_leader_hands_over_within_lease_and_retry(shared_cluster, config_for, spawn):
    # On Valkey too, through the repeated SIGKILLs of tests/test_replay.py.
    replicas = start_three(shared_cluster, config_for, spawn)
    leader = wait_for_single_leader(replicas)
    wait_until_eligible(replicas)
    killed_at = time.monotonic()
    leader.kill()

    survivors = [r for r in replicas if r is not leader]
    successor = wait_for_single_leader(survivors, timeout=LEASE + 10)
    takeover = time.monotonic() - killed_at
    print(f"SIGKILL takeover: {takeover:.2f} s")
    # The lease must run out first; the retry interval (with jitter) and polling come on top.
    assert takeover <= LEASE + RETRY * 1.2 + 1.5
    expire_keys(shared_cluster, [b"after-kill:1"])
    wait_until(lambda: b"after-kill:1" in successor.handled_keys(), timeout=10, what="the successor to process")


def test_sigterm_hands_over_at_once_to_followers_of_any_age_and_loses_nothing(shared_cluster, config_for, spawn):
    config = config_for(shared_cluster)
    leader = spawn("1", config)
    leader.wait_ready()
    wait_for_single_leader([leader])
    with SteadyStream(shared_cluster, prefix="young", rate=200) as stream:
        survivors = [spawn(name, config) for name in ("2", "3")]
        for replica in survivors:
            replica.wait_ready()
        time.sleep(1.0)  # followers a second old: far younger than the 8 s warm-up once required
        stopped_at = time.monotonic()
        leader.process.send_signal(15)
        wait_for_single_leader(survivors, timeout=LEASE)
        takeover = time.monotonic() - stopped_at
        time.sleep(1.0)
    print(f"SIGTERM takeover by followers about 1 s old: {takeover:.2f} s")
    assert leader.process.wait(timeout=15) == 0
    assert takeover < 2.0  # released, not expired: far below the 5 s lease
    assert [e["reason"] for e in leader.logged("stepped down")] == ["shutdown"]
    wait_for_all([leader, *survivors], stream.keys)


def test_a_term_is_one_more_than_the_highest_stored():
    assert propose_term([7, 9, 8], now=0.0) == 10


def test_a_term_is_never_below_the_clusters_time_in_milliseconds():
    assert propose_term([], now=1_796_305_630.5114) == 1_796_305_630_511


def test_a_stored_term_ahead_of_the_clock_still_grows_by_one():
    assert propose_term([1_796_305_630_511], now=1_796_305_630.0) == 1_796_305_630_512


def test_terms_strictly_increase_across_transitions_though_the_stored_term_is_evicted(
    shared_cluster, config_for, spawn
):
    replicas = start_three(shared_cluster, config_for, spawn)
    for transition in range(2):
        leader = wait_for_single_leader([r for r in replicas if r.running])
        if transition == 1:
            # A node under allkeys-lru at its maxmemory evicts the term, which is read only at elections,
            # long before the lease renewed every second; as a failover that dropped the last write would.
            term = term_key(leader.config["election"]["lock_name"]).encode()
            tag = term[term.index(b"{") + 1 : term.index(b"}")].decode()
            evict(shared_cluster.node_for_key(term), [term], policy="allkeys-lru", tag=tag)
        wait_until_eligible(replicas)
        leader.terminate()
    last = wait_for_single_leader([r for r in replicas if r.running])
    expire_keys(shared_cluster, [b"term-check:1"])
    wait_until(lambda: last.events(), timeout=10, what="an event from the third leader")

    terms = terms_in_order(replicas)
    assert len(terms) == 3
    assert terms == sorted(set(terms)), f"terms did not strictly increase: {terms}"
    assert last.events()[0]["term"] == terms[-1]


def test_leader_steps_down_before_its_lease_expires_when_it_cannot_renew(cluster, config_for, spawn):
    replicas = start_three(cluster, config_for, spawn)
    leader = wait_for_single_leader(replicas)
    lock_node = lease_holder(cluster, leader)
    frozen_at = time.monotonic()
    cluster.freeze(lock_node)
    try:
        wait_until(lambda: not leader.leads(), timeout=LEASE, what="the leader to step down")
        stepped_down_after = time.monotonic() - frozen_at
    finally:
        cluster.thaw(lock_node)
    print(f"stepped down {stepped_down_after:.2f} s after its lock's node froze")
    assert stepped_down_after < LEASE
    reasons = [e["reason"] for e in leader.logged("stepped down")]
    assert reasons and reasons[0] == "renew deadline passed"
    assert leader.metric("expiryd_leader_stepdowns_total", reason="renew_deadline_passed") == 1


# In process: the elector's step-down timing against a lock that answers as told.


class FakeMaster:
    """Enough of a Redis client for the term: GET, and the raise-term script."""

    def __init__(self) -> None:
        self.term = 0

    def register_script(self, script: str) -> None:
        """pottery registers its scripts at construction; the fake lock never runs them."""

    async def get(self, key: str) -> int:
        return self.term

    async def eval(self, script: str, numkeys: int, key: str, proposed: int) -> int:
        self.term = proposed
        return 1


class FakeLock:
    def __init__(self) -> None:
        self.extend_error: Exception | None = None
        self.extend_hangs = False
        self.free = True
        self.released = 0

    async def acquire(self, *, blocking: bool) -> bool:
        return self.free

    async def extend(self) -> None:
        if self.extend_hangs:
            await asyncio.sleep(3600)
        if self.extend_error is not None:
            raise self.extend_error

    async def release(self) -> None:
        self.released += 1


def lease_gone() -> ExtendUnlockedLock:
    return ExtendUnlockedLock(key="{expiryd}:leader", masters=set())


class Eligible:
    """A succession that always lets this replica lead, and counts its elections."""

    def __init__(self) -> None:
        self.elections = 0

    async def may_lead(self) -> bool:
        return True

    def elected(self) -> None:
        self.elections += 1


class Announcements:
    """Stands in for the merged queue behind a TermSignal: counts the wake-ups."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def elector_with_fake_lock(**timings: float) -> tuple[Elector, FakeLock, Metrics]:
    settings = ElectionConfig(
        **{"lease": 5.0, "renew_interval": 0.05, "renew_deadline": 0.3, "retry_interval": 0.05, **timings}
    )
    metrics = Metrics()
    # At the epoch, the time floor is 0: terms count 1, 2, ... from the stored one.
    elector = Elector(
        masters=[FakeMaster()],
        settings=settings,
        metrics=metrics,
        now=lambda: 0.0,
        succession=Eligible(),
        signal=TermSignal(queue=Announcements()),
    )
    lock = FakeLock()
    elector._lock = lock  # type: ignore[assignment]
    return elector, lock, metrics


async def leading(elector: Elector) -> int:
    while (term := elector.term()) is None:
        await asyncio.sleep(0.005)
    return term


def stepdowns(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("expiryd_leader_stepdowns_total", {"reason": reason}) or 0.0


def test_a_leader_whose_renewals_hang_stops_acting_by_the_renew_deadline():
    async def scenario() -> tuple[float, Metrics, FakeLock]:
        elector, lock, metrics = elector_with_fake_lock()
        async with elector:
            await leading(elector)
            lock.extend_hangs, lock.free = True, False
            started = time.monotonic()
            while elector.term() is not None:
                await asyncio.sleep(0.005)
            stopped_after = time.monotonic() - started
            while not stepdowns(metrics, "renew_deadline_passed"):
                await asyncio.sleep(0.005)
        return stopped_after, metrics, lock

    stopped_after, metrics, lock = asyncio.run(scenario())
    # The promise: it stops acting before its 5 s lease can pass to another replica. It takes about the
    # 0.3 s deadline; a loaded machine delays the loop, so only the lease is a bound worth asserting.
    assert stopped_after < 5.0
    assert lock.released >= 1


def test_term_is_none_once_the_deadline_passes_even_before_the_loop_notices():
    async def scenario() -> tuple[int, int | None]:
        elector, lock, _ = elector_with_fake_lock(renew_interval=60.0, renew_deadline=0.1)
        async with elector:
            term = await leading(elector)
            # The renewal loop sleeps for a minute: only the monotonic clock can stop this leader.
            await asyncio.sleep(0.15)
            return term, elector.term()

    term, after = asyncio.run(scenario())
    assert term == 1 and after is None


def test_a_lease_found_gone_at_renewal_steps_down_at_once():
    async def scenario() -> Metrics:
        elector, lock, metrics = elector_with_fake_lock(renew_deadline=60.0)
        async with elector:
            await leading(elector)
            lock.extend_error, lock.free = lease_gone(), False
            while elector.term() is not None:
                await asyncio.sleep(0.005)
        return metrics

    assert stepdowns(asyncio.run(scenario()), "lease_lost") == 1


def test_a_failed_renewal_within_the_deadline_keeps_the_leader():
    async def scenario() -> tuple[int | None, Metrics]:
        elector, lock, metrics = elector_with_fake_lock(renew_deadline=60.0)
        async with elector:
            await leading(elector)
            lock.extend_error = RedisConnectionError("blip")
            await asyncio.sleep(0.2)
            return elector.term(), metrics

    term, metrics = asyncio.run(scenario())
    assert term == 1
    assert metrics.registry.get_sample_value("expiryd_lock_renewals_total", {"result": "error"}) >= 1


def test_closing_the_elector_releases_the_lease_at_once():
    async def scenario() -> tuple[FakeLock, Metrics]:
        elector, lock, metrics = elector_with_fake_lock(renew_deadline=60.0)
        async with elector:
            await leading(elector)
        return lock, metrics

    lock, metrics = asyncio.run(scenario())
    assert lock.released == 1 and stepdowns(metrics, "shutdown") == 1


def test_each_new_term_is_greater_than_the_last():
    async def scenario() -> list[int]:
        elector, lock, _ = elector_with_fake_lock(renew_deadline=60.0)
        terms = []
        async with elector:
            terms.append(await leading(elector))
            lock.extend_error, lock.free = lease_gone(), False
            while elector.term() is not None:
                await asyncio.sleep(0.005)
            lock.extend_error, lock.free = None, True
            terms.append(await leading(elector))
        return terms

    assert asyncio.run(scenario()) == [1, 2]


def test_a_client_error_from_a_torn_down_connection_is_a_failed_renewal_not_the_end_of_the_election():
    async def scenario() -> tuple[int | None, bool]:
        elector, lock, _ = elector_with_fake_lock(renew_deadline=60.0)
        async with elector:
            await leading(elector)
            # What redis-py raised when the lease's primary restarted under a renewal.
            lock.extend_error = AttributeError("'NoneType' object has no attribute 'writelines'")
            await asyncio.sleep(0.2)
            return elector.term(), elector.task.done()

    term, ended = asyncio.run(scenario())
    assert term == 1 and not ended
