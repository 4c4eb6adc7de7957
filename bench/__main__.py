"""``python -m bench SCENARIO``: run a benchmark, print a table, write the raw numbers as JSON.

    python -m bench takeover              # SIGKILL and SIGTERM under load, replay on/off, seed design,
                                          # young followers, a whole restart (plain and payload route)
    python -m bench throughput            # a 200k-key burst: expiryd vs a bare subscriber vs redis-cli
    python -m bench latency               # added latency at doubling rates (3 runs each); CPU and memory
    python -m bench handlers              # webhook and stream against log: 100k and 200k bursts, added latency
    python -m bench ontime                # lateness with the schedule against Redis's own timing, 0-1M other keys
    python -m bench all
    python -m bench all --smoke           # seconds, to prove the scripts still work
    python -m bench profile               # a py-spy profile of the leader at 10,000 keys/s (not in "all")
    python -m bench profile --route stream
    python -m bench hexpired              # hash-field expirations against key expirations, on Valkey (not in "all")
    python -m bench sweep                 # one orphan sweep over 1M companion keys: time and Redis CPU (not in "all")
    python -m bench faults                # silenced and cut-off connections, skewed clocks; as root (not in "all")
    python -m bench stall                 # the lease's primary stopped 25 s at 250 keys/s: what is lost (not in "all")
    python -m bench outage                # a webhook answering 503 for 60 s, the leader killed half way (not in "all")
    python -m bench rescan                # one leader rescan over 10M keys: commands and CPU per pass (not in "all")
    python -m bench memory                # follower RSS per million keys, an unrouted flood, learning rate: the code
                                          # now against --before (a git revision), in one run (not in "all")

Run from the repository root, with expiryd installed (``make setup``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import (
    handlers,
    hash_fields,
    latency,
    memory,
    network_faults,
    ontime,
    outage,
    profile,
    rescan,
    stall,
    sweep,
    takeover,
    throughput,
)

SCENARIOS = ("throughput", "latency", "takeover", "handlers", "ontime")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "scenario",
        choices=(*SCENARIOS, "all", "profile", "hexpired", "sweep", "faults", "stall", "outage", "memory", "rescan"),
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the scripts work")
    parser.add_argument("--json", type=Path, default=None, help="where to write raw numbers")
    parser.add_argument("--rounds", type=int, default=5, help="takeover: SIGKILLs and SIGTERMs per variant")
    parser.add_argument("--before", default=memory.BEFORE, help="memory: the git revision to compare with")
    parser.add_argument("--route", choices=sorted(profile.ROUTES), default="recorder", help="profile: the handler")
    args = parser.parse_args()
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    report: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "results": {}}
    for scenario in scenarios:
        rows = run_scenario(scenario, smoke=args.smoke, rounds=args.rounds, route=args.route, before=args.before)
        report["results"][scenario] = rows
        print_table(scenario, rows)
    path = args.json or Path("bench/results") / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"raw numbers: {path}")
    return 0


def run_scenario(
    scenario: str, *, smoke: bool, rounds: int, route: str, before: str = memory.BEFORE
) -> list[dict[str, Any]]:
    if scenario == "profile":
        return profile.run(route=route, rate=10_000, seconds=2.0 if smoke else 8.0, burst=5_000 if smoke else 50_000)
    if scenario == "hexpired":
        return hash_fields.run(
            rate=100 if smoke else 500,
            seconds=2.0 if smoke else 8.0,
            burst=500 if smoke else 10_000,
            background=1_000 if smoke else 100_000,
            wait=10.0 if smoke else 120.0,
        )
    if scenario == "outage":
        return outage.run(rate=50, outage=10.0) if smoke else outage.run(rate=200, outage=60.0)
    if scenario == "rescan":
        if smoke:
            return rescan.run(keys=200_000, routed=2_000, interval=5.0)
        return rescan.run(keys=10_000_000, routed=100_000, interval=60.0)
    if scenario == "memory":
        if smoke:
            return memory.run(keys=100_000, flood=30_000, burst=50_000, before=before)
        return memory.run(keys=1_000_000, flood=300_000, burst=500_000, before=before)
    if scenario == "stall":
        return stall.run(rate=100, stall=5.0) if smoke else stall.run(rate=250, stall=25.0)
    if scenario == "faults":
        if smoke:
            return network_faults.run(rate=100, cut_for=5.0, silent_for=5.0, phase=3.0)
        return network_faults.run(rate=500)
    if scenario == "sweep":
        return sweep.run(
            companions=2_000 if smoke else 1_000_000,
            orphans=20 if smoke else 1_000,
            rates=[1_000_000] if smoke else [20_000, 1_000_000],
        )
    if scenario == "takeover":
        variants = ["replay on"] if smoke else list(takeover.VARIANTS)
        rounds = 1 if smoke else rounds
        results = takeover.run(
            kills=rounds,
            terms=0 if smoke else rounds,  # a SIGTERM round differs from a SIGKILL one by the signal alone
            rate=100 if smoke else 500,
            variants=variants,
            young=0 if smoke else rounds,
            restarts=0 if smoke else 1,
        )
        return takeover.summarize(results)
    if scenario == "latency":
        rates = [500] if smoke else [2_500, 5_000, 10_000, 20_000, 40_000]
        return latency.run(
            rates=rates, seconds=2.0 if smoke else 8.0, runs=1 if smoke else 3, burst=2_000 if smoke else 200_000
        )
    if scenario == "ontime":
        return ontime.run(
            crowds=[0] if smoke else [0, 100_000, 1_000_000],
            rates=[300] if smoke else [1_000, 10_000],
            seconds=1.0 if smoke else 5.0,
            memory_keys=0 if smoke else 1_000_000,
            compare_off=not smoke,
            redis_slack=2.0 if smoke else 12.0,
        )
    if scenario == "handlers":
        return handlers.run(
            sizes=(2_000,) if smoke else (100_000, 200_000),
            runs=1 if smoke else 3,
            rate=300 if smoke else 2_000,
            seconds=1.5 if smoke else 8.0,
        )
    return throughput.run(keys=5_000 if smoke else 200_000, runs=1 if smoke else 3)


def machine() -> dict[str, Any]:
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis": redis_version,
        "platform": platform.platform(),
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(c for row in rows for c in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print(f"\n{title}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    sys.exit(main())
