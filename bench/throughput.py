"""Throughput ceiling: a burst of keys all due at once, read by expiryd and by baselines in the same run.

All readers subscribe to the same cluster at the same time and see the same
burst: a bare asyncio redis-py subscriber (``bench/bare_subscriber.py``), one
``redis-cli`` per primary (the C baseline), and an expiryd leader whose log
handler writes to /dev/null. A second burst in each run has an expiryd leader
with the stream handler (``XADD`` on the same cluster) beside the bare subscriber. Each one's rate is the burst size divided by the
time from the keys' common due time to the moment that reader had them all, so
it includes how fast Redis itself expires keys; the ratios between readers are
what this measures.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import Replica, set_keys_due_at, wait_for_single_leader, wait_until, write_config

READERS = ("bare redis-py subscriber", "redis-cli (C)", "expiryd (log)")


def run(*, keys: int, runs: int) -> list[dict[str, Any]]:
    """Per run, two bursts: the log handler beside both baselines, then the stream handler beside the bare subscriber."""
    samples: dict[str, list[float]] = {reader: [] for reader in (*READERS, "expiryd (stream)")}
    ratios: dict[str, list[float]] = {reader: [] for reader in samples}
    for _ in range(runs):
        for handler in ("log", "stream"):
            rates = _one_burst(keys, handler=handler)
            bare = rates["bare redis-py subscriber"]
            for reader, rate in rates.items():
                if handler == "stream" and reader != "expiryd (stream)":
                    continue  # the baselines of the first burst are the ones reported
                samples[reader].append(rate)
                ratios[reader].append(rate / bare)
    return [
        {
            "reader": reader,
            "keys": keys,
            "runs": runs,
            "events_per_s_median": round(statistics.median(rates)),
            "min": round(min(rates)),
            "max": round(max(rates)),
            # Each run's ratio is taken within one burst, against the bare subscriber beside it.
            "ratio_to_bare": round(statistics.median(ratios[reader]), 3),
        }
        for reader, rates in samples.items()
    ]


def _route(handler: str) -> dict[str, Any]:
    if handler == "log":
        return {"match": "*", "name": "all", "log": {"path": "/dev/null"}}
    return {"match": "*", "name": "all", "stream": {"name": "{bench}:burst"}}


def _one_burst(keys: int, *, handler: str) -> dict[str, float]:
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        primaries = [node.address for node in cluster.primaries()]
        replica = Replica("1", write_config(directory, cluster, routes=[_route(handler)]), directory)
        bare = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_subscriber", "--expect", str(keys), *primaries],
            stdout=subprocess.PIPE,
            text=True,
        )
        cli_outputs = [directory / f"cli-{i}.txt" for i in range(len(primaries))] if handler == "log" else []
        clis = [
            subprocess.Popen(
                ["redis-cli", "-p", address.rsplit(":", 1)[1], "psubscribe", "__keyevent@0__:expired"],
                stdout=out.open("wb"),
                stderr=subprocess.DEVNULL,
            )
            for address, out in zip(primaries, cli_outputs, strict=False)
        ]
        expiryd = f"expiryd ({handler})"
        awaited = {expiryd, "redis-cli (C)"} if clis else {expiryd}
        try:
            replica.wait_ready()
            wait_for_single_leader([replica])
            assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
            due_ms = int(time.time() * 1000) + max(3000, keys // 20)
            set_keys_due_at(cluster, [f"burst:{i}".encode() for i in range(keys)], due_ms)
            due = due_ms / 1000
            finished: dict[str, float] = {}

            def poll() -> bool:
                now = time.time()
                if clis and "redis-cli (C)" not in finished and _cli_messages(cli_outputs) >= keys:
                    finished["redis-cli (C)"] = now
                if (
                    expiryd not in finished
                    and replica.metric("expiryd_events_processed_total", route="all", outcome="ok") >= keys
                ):
                    finished[expiryd] = now
                return awaited <= finished.keys()

            wait_until(poll, timeout=300, interval=0.02, what="every reader to finish the burst")
            finished["bare redis-py subscriber"] = json.loads(bare.stdout.readline())["done_at"]
            return {reader: keys / (done - due) for reader, done in finished.items()}
        finally:
            bare.kill()
            for cli in clis:
                cli.kill()
            replica.close()


def _cli_messages(outputs: list[Path]) -> int:
    # redis-cli prints four lines per pmessage: type, pattern, channel, key; plus three for the subscription.
    return sum(max(0, (path.read_bytes().count(b"\n") - 3) // 4) for path in outputs)
