"""Throughput ceiling: a burst of keys all due at once, read by expiryd and by baselines in the same run.

All readers subscribe to the same cluster at the same time and see the same
burst: a bare asyncio redis-py subscriber (``bench/bare_subscriber.py``), one
``redis-cli`` per primary (the C baseline), and an expiryd leader whose log
handler writes to /dev/null. Each one's rate is the burst size divided by the
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

from expiryd.localcluster import LocalCluster
from tests.harness import Replica, set_keys_due_at, wait_for_single_leader, wait_until, write_config


def run(*, keys: int, runs: int) -> list[dict[str, Any]]:
    samples: dict[str, list[float]] = {"bare redis-py subscriber": [], "redis-cli (C)": [], "expiryd (log)": []}
    for _ in range(runs):
        for reader, rate in _one_burst(keys).items():
            samples[reader].append(rate)
    rows = []
    bare = statistics.median(samples["bare redis-py subscriber"])
    for reader, rates in samples.items():
        rows.append({
            "reader": reader,
            "keys": keys,
            "runs": runs,
            "events_per_s_median": round(statistics.median(rates)),
            "min": round(min(rates)),
            "max": round(max(rates)),
            "ratio_to_bare": round(statistics.median(rates) / bare, 3),
        })
    return rows


def _one_burst(keys: int) -> dict[str, float]:
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        primaries = [node.address for node in cluster.primaries()]
        routes = [{"match": "*", "name": "all", "log": {"path": "/dev/null"}}]
        replica = Replica("1", write_config(directory, cluster, routes=routes), directory)
        bare = subprocess.Popen([sys.executable, "-m", "bench.bare_subscriber", "--expect", str(keys), *primaries],
                                stdout=subprocess.PIPE, text=True)
        cli_outputs = [directory / f"cli-{i}.txt" for i in range(len(primaries))]
        clis = [subprocess.Popen(["redis-cli", "-p", address.rsplit(":", 1)[1], "psubscribe",
                                  "__keyevent@0__:expired"], stdout=out.open("wb"), stderr=subprocess.DEVNULL)
                for address, out in zip(primaries, cli_outputs, strict=True)]
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
                if "redis-cli (C)" not in finished and _cli_messages(cli_outputs) >= keys:
                    finished["redis-cli (C)"] = now
                if "expiryd (log)" not in finished and \
                        replica.metric("expiryd_events_processed_total", route="all", outcome="ok") >= keys:
                    finished["expiryd (log)"] = now
                return len(finished) == 2
            wait_until(poll, timeout=120, interval=0.02, what="every reader to finish the burst")
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
