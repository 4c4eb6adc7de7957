"""No event lost when the leader dies: followers buffer, the leader records progress, the next one replays."""

from __future__ import annotations

import time

from .harness import (
    SteadyStream,
    all_handled,
    event_key,
    lease_holder,
    primary_away_from_the_lease,
    start_replicas,
    wait_for_all,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
)

RATE = 200  # keys per second
RENEW_INTERVAL = 1.0


def test_repeated_sigkill_of_the_leader_loses_nothing(shared_valkey_cluster, config_for, spawn):
    # On Valkey; a single SIGKILL and the failovers run on Redis elsewhere in this file and in test_election.
    config, replicas = start_replicas(shared_valkey_cluster, config_for, spawn)
    kills = 2
    with SteadyStream(shared_valkey_cluster, prefix="sigkill", rate=RATE) as stream:
        for round_number in range(kills):
            leader = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
            wait_until_eligible(replicas)
            time.sleep(1.0)
            leader.kill()
            replacement = spawn(f"new{round_number}", config)  # as a Deployment would
            replicas.append(replacement)
            replacement.wait_ready()
        wait_for_single_leader([r for r in replicas if r.running], timeout=15)
        time.sleep(1.0)
    counts = wait_for_all(replicas, stream.keys)

    duplicates = sum(counts[k] - 1 for k in stream.keys)
    print(f"{len(stream.keys)} keys, {kills} SIGKILLs, {duplicates} duplicates")
    # Per kill, at most what the dead leader finished since its last progress record.
    assert duplicates <= kills * RATE * (RENEW_INTERVAL + 0.5)
    assert sum(r.metric("expiryd_replayed_events_total") for r in replicas if r.running) > 0
    # Each dead leader's lease key expired in Redis, which published it: expiryd's own key reaches no handler.
    assert f"redlock:{replicas[0].config['election']['lock_name']}".encode() not in counts


def test_hash_field_expirations_are_replayed_after_a_sigkill_like_key_expirations(
    shared_valkey_cluster, config_for, spawn
):
    routes = [{"match": "*", "name": "all", "events": ["expired", "hexpired"], "log": {}}]
    _, replicas = start_replicas(shared_valkey_cluster, config_for, spawn, count=2, routes=routes)
    leader = wait_for_single_leader(replicas)
    with SteadyStream(shared_valkey_cluster, prefix="hx-sigkill", rate=RATE, hash_fields=True) as stream:
        wait_until_eligible(replicas)
        time.sleep(1.0)
        old_term = leader.logged("became leader")[-1]["term"]
        leader.kill()
        successor = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
        time.sleep(1.0)
    counts = wait_for_all(replicas, stream.keys)

    assert all(counts[k] >= 1 for k in stream.keys)
    wanted = set(stream.keys)
    ours = [e for e in all_handled(replicas) if event_key(e) in wanted]
    assert {e["kind"] for e in ours} == {"hexpired"}
    assert {e["term"] for e in successor.events() if event_key(e) in wanted} - {old_term}
    assert successor.metric("expiryd_replayed_events_total") > 0


def test_sigterm_hand_off_processes_every_event_exactly_once(shared_cluster, config_for, spawn):
    _, replicas = start_replicas(shared_cluster, config_for, spawn)
    with SteadyStream(shared_cluster, prefix="sigterm", rate=RATE) as stream:
        for _ in range(2):
            leader = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
            wait_until_eligible(replicas)
            time.sleep(1.0)
            assert leader.terminate() == 0
        time.sleep(1.5)
    counts = wait_for_all(replicas, stream.keys)

    twice = [k for k in stream.keys if counts[k] > 1]
    assert twice == [], f"{len(twice)} keys handled more than once, e.g. {twice[:5]}"


def test_a_leader_paused_past_its_lease_loses_nothing_and_acts_only_with_its_old_term(
    shared_cluster, config_for, spawn
):
    _, replicas = start_replicas(shared_cluster, config_for, spawn)
    paused = wait_for_single_leader(replicas)
    with SteadyStream(shared_cluster, prefix="sigstop", rate=RATE) as stream:
        wait_until_eligible(replicas)
        time.sleep(1.0)
        old_term = paused.logged("became leader")[-1]["term"]
        paused.freeze()
        time.sleep(7.0)  # past the 5 s lease: another replica takes over meanwhile
        thawed_at = time.time()
        paused.thaw()
        time.sleep(2.0)
    counts = wait_for_all(replicas, stream.keys)

    assert all(counts[k] >= 1 for k in stream.keys)
    late = [e for e in paused.events() if e["term"] != old_term]
    assert late == [], "the paused leader processed events under a newer term"
    after_wake = [e for e in paused.events() if e["received_at"] > thawed_at + 0.5]
    assert after_wake == [], f"the paused leader processed {len(after_wake)} events after waking"
    terms = {e["term"] for e in all_handled(replicas)}
    assert max(terms) > old_term
    assert wait_until(lambda: paused.logged("stepped down"), timeout=5, what="the paused leader to step down")


def test_primary_failovers_during_and_right_after_a_leader_change_lose_nothing_and_terms_still_grow(
    cluster, config_for, spawn
):
    _, replicas = start_replicas(cluster, config_for, spawn)
    leader = wait_for_single_leader(replicas)
    primary = primary_away_from_the_lease(cluster, leader)
    with SteadyStream(cluster, prefix="double", rate=RATE) as stream:
        wait_until_eligible(replicas)
        time.sleep(1.0)
        leader.kill()
        cluster.failover(cluster.replica_of(primary))
        successor = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
        # The lease's primary fails over just after the term was raised on it: the promoted replica may
        # lack that write, and the term it holds may be older than the running leader's.
        cluster.failover(cluster.replica_of(lease_holder(cluster, successor)))
        time.sleep(2.0)
        wait_until_eligible([r for r in replicas if r.running])
        successor.kill()
        wait_for_single_leader([r for r in replicas if r.running], timeout=15)
        time.sleep(2.0)
    counts = wait_for_all(replicas, stream.keys)
    became = sorted((entry for r in replicas for entry in r.logged("became leader")), key=lambda e: e["ts"])
    terms = [entry["term"] for entry in became]
    assert len(terms) >= 3 and terms == sorted(set(terms)), f"terms did not strictly increase: {terms}"
    assert all(counts[k] >= 1 for k in stream.keys)
