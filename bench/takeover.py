"""Takeover: how long nobody handles events when the leader dies or stops, and what is lost or repeated.

Under a steady load of expiring keys, the leader of three replicas is sent
SIGKILL (or SIGTERM) several times; each victim is replaced by a fresh replica,
as a Deployment would. For each signal it measures the time from the signal to
the first event handled under the next term (polled every 10 ms), and at the
end, which keys were never handled and which were handled more than once.

The same load runs with replay on (the default), with replay off, and with the
seed design's timings (lease 8 s, takeover attempts every 5 s, no replay).

Two more situations, with replay on: a SIGTERM while both followers are young
(replaced ``YOUNG_FOR`` seconds before it, far less than the old 8 s warm-up),
and a restart of the whole deployment (every replica SIGKILLed, ``DOWN_FOR``
seconds with none, three fresh replicas), on a plain route and on a payload
route, where the orphan sweep delivers what nobody heard. For a restart,
"takeover" is the time from starting the fresh replicas to the first event
handled under a new term.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import (
    Replica,
    SteadyStream,
    all_handled,
    event_key,
    wait_for_single_leader,
    wait_until,
    wait_until_eligible,
    write_config,
)

YOUNG_FOR = 2.0
DOWN_FOR = 10.0
PAYLOAD = "{key}:payload"

VARIANTS: dict[str, dict[str, Any]] = {
    "replay on": {},
    "replay off": {"replay": {"enabled": False}},
    "seed design (lease 8 s, retry 5 s, no replay)": {
        "election": {"lease": "8s", "retry_interval": "5s", "renew_deadline": "6s"},
        "replay": {"enabled": False},
    },
}


@dataclass
class Round:
    signal: str
    takeover_s: float


@dataclass
class VariantResult:
    variant: str
    rounds: list[Round] = field(default_factory=list)
    keys: int = 0
    lost: int = 0
    duplicates: int = 0


def run(
    *, kills: int, terms: int, rate: int, variants: list[str], young: int = 0, restarts: int = 0
) -> list[VariantResult]:
    results = []
    for variant in variants:
        for signal, count in (("SIGKILL", kills), ("SIGTERM", terms)):
            if count:
                results.append(_run_variant(variant, signal, count, rate))
    if young:
        results.append(_run_variant("replay on", "SIGTERM", young, rate, young_followers=True))
    if restarts:
        for payload in (False, True):
            results.append(_run_restarts(restarts, rate, payload=payload))
    return results


def _run_variant(variant: str, signal: str, count: int, rate: int, *, young_followers: bool = False) -> VariantResult:
    name = f"{variant}, {signal}" + (f", followers {YOUNG_FOR:.0f} s old" if young_followers else "")
    result = VariantResult(variant=name)
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        routes = [{"match": "*", "name": "all", "log": {}}]
        config = write_config(directory, cluster, routes=routes, **VARIANTS[variant])
        replicas = [Replica(str(i), config, directory) for i in (1, 2, 3)]
        try:
            for replica in replicas:
                replica.wait_ready()
            with SteadyStream(cluster, prefix="takeover", rate=rate) as stream:
                for round_number in range(count):
                    if young_followers:
                        replicas += _replace_followers(replicas, config, directory, round_number)
                    replicas.append(
                        _one_round(result, replicas, config, directory, signal, round_number, warm=not young_followers)
                    )
                time.sleep(2.0)
            _count_outcomes(result, replicas, stream.keys)
        finally:
            for replica in replicas:
                replica.close()
    return result


def _replace_followers(replicas: list[Replica], config: Path, directory: Path, round_number: int) -> list[Replica]:
    """Stop the followers and start fresh ones, YOUNG_FOR seconds before the leader is signalled."""
    running = [r for r in replicas if r.running]
    leader = wait_for_single_leader(running, timeout=30)
    for follower in running:
        if follower is not leader:
            follower.terminate()
    fresh = [Replica(f"y{round_number}-{i}", config, directory) for i in (1, 2)]
    for replica in fresh:
        replica.wait_ready()
    return fresh


def _run_restarts(count: int, rate: int, *, payload: bool) -> VariantResult:
    result = VariantResult(
        variant=f"whole restart ({DOWN_FOR:.0f} s down), " + ("payload route" if payload else "plain route")
    )
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        route: dict[str, Any] = {"match": "*", "name": "all", "log": {}}
        if payload:
            route["payload"] = PAYLOAD
        config = write_config(directory, cluster, routes=[route])
        replicas = [Replica(str(i), config, directory) for i in (1, 2, 3)]
        try:
            for replica in replicas:
                replica.wait_ready()
            with SteadyStream(cluster, prefix="restart", rate=rate, payload=PAYLOAD if payload else None) as stream:
                for round_number in range(count):
                    running = [r for r in replicas if r.running]
                    leader = wait_for_single_leader(running, timeout=30)
                    time.sleep(1.0)
                    old_term = max(e["term"] for e in leader.logged("became leader"))
                    for replica in running:
                        replica.kill()
                    time.sleep(DOWN_FOR)
                    fresh = [Replica(f"r{round_number}-{i}", config, directory) for i in (1, 2, 3)]
                    started = time.monotonic()
                    replicas += fresh
                    wait_until(
                        lambda: _handled_under_newer_term(fresh, old_term),
                        timeout=60,
                        interval=0.01,
                        what="the first event after the restart",
                    )
                    result.rounds.append(Round(signal="restart", takeover_s=time.monotonic() - started))
                time.sleep(2.0)
            # The sweep confirms a candidate 10 s after finding it.
            _count_outcomes(result, replicas, stream.keys, wait=40.0 if payload else 20.0)
        finally:
            for replica in replicas:
                replica.close()
    return result


def _one_round(
    result: VariantResult,
    replicas: list[Replica],
    config: Path,
    directory: Path,
    signal: str,
    round_number: int,
    *,
    warm: bool = True,
) -> Replica:
    running = [r for r in replicas if r.running]
    leader = wait_for_single_leader(running, timeout=30)
    if warm and leader.config.get("replay", {}).get("enabled", True):
        wait_until_eligible(running, timeout=30)
        time.sleep(1.0)
    elif not warm:
        time.sleep(YOUNG_FOR)
    old_term = max(e["term"] for e in leader.logged("became leader"))
    survivors = [r for r in running if r is not leader]
    sent = time.monotonic()
    if signal == "SIGKILL":
        leader.kill()
    else:
        leader.process.send_signal(15)
    wait_until(
        lambda: _handled_under_newer_term(survivors, old_term),
        timeout=60,
        interval=0.01,
        what="the first event of the next term",
    )
    result.rounds.append(Round(signal=signal, takeover_s=time.monotonic() - sent))
    if signal == "SIGTERM":
        leader.process.wait(timeout=30)
    return Replica(f"r{round_number}", config, directory)


def _handled_under_newer_term(replicas: list[Replica], old_term: int) -> bool:
    for replica in replicas:
        try:
            if any(e["term"] > old_term for e in replica.events()[-50:]):
                return True
        except ValueError:
            continue  # a line being written
    return False


def _count_outcomes(result: VariantResult, replicas: list[Replica], keys: list[bytes], *, wait: float = 20.0) -> None:
    def counts() -> Counter[bytes]:
        return Counter(event_key(e) for e in all_handled(replicas))

    def all_handled_once() -> bool:
        handled = counts()
        return all(handled[k] for k in keys)

    # Without replay some keys are never handled: that is what is being measured.
    with contextlib.suppress(AssertionError):
        wait_until(all_handled_once, timeout=wait, interval=0.5, what="every key")
    handled = counts()
    result.keys = len(keys)
    result.lost = sum(1 for k in keys if not handled[k])
    result.duplicates = sum(handled[k] - 1 for k in keys if handled[k] > 1)


def summarize(results: list[VariantResult]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        takeovers = [r.takeover_s for r in result.rounds]
        rows.append(
            {
                "variant": result.variant,
                "signals": len(takeovers),
                "takeover_min_s": round(min(takeovers), 2),
                "takeover_median_s": round(statistics.median(takeovers), 2),
                "takeover_max_s": round(max(takeovers), 2),
                "keys": result.keys,
                "lost": result.lost,
                "duplicates": result.duplicates,
                "lost_per_signal": round(result.lost / len(takeovers), 1),
                "duplicates_per_signal": round(result.duplicates / len(takeovers), 1),
            }
        )
    return rows
