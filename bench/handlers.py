"""Handlers compared: throughput and added latency of webhook and stream against log, in one run.

**Throughput.** For each handler in turn, a single expiryd leader whose one
route uses it takes a burst of keys all due at once; its rate is the burst size
divided by the time from the due time to the last ``ok`` outcome. The order of
handlers rotates between runs, and each ratio is to the log handler's median.

**Added latency.** Three expiryd leaders run at once, each under a lock of its
own, so each hears the same keys and hands them to a different handler: log
(a pipe read here), webhook (a local HTTP receiver, which notes when each
request arrives) and stream (the entry id's millisecond is when Redis
appended it). Keys are named with their due time and spread over all
primaries, as in :mod:`bench.latency`. Lateness is from the due time to
"handled"; the added latency of a handler is its time minus the log handler's
time for the same key.

Every route runs with its handler's defaults (``concurrency`` and
``batch.size``, see ``HANDLER_DEFAULTS`` in :mod:`expiryd.config`): the log
route one lane of 100 events a call, the webhook route two lanes of up to 500,
the stream route four lanes of up to 500 entries, each batch in one round trip.
The burst is run at two sizes, 100,000 and 200,000 keys.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import Replica, free_port, set_keys_due_at, wait_for_single_leader, wait_until, write_config
from tests.receiver import WebhookReceiver

from .latency import due_time, percentile

HANDLERS = ("log", "webhook", "stream")


def run(*, sizes: tuple[int, ...], runs: int, rate: int, seconds: float) -> list[dict[str, Any]]:
    with (
        LocalCluster() as cluster,
        WebhookReceiver() as receiver,
        tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir,
    ):
        directory = Path(workdir)
        rows = [row for keys in sizes for row in _throughput(cluster, receiver, directory, keys=keys, runs=runs)]
        rows += _latency(cluster, receiver, directory, rate=rate, seconds=seconds)
    return rows


def _route(handler: str, receiver: WebhookReceiver, prefix: str) -> dict[str, Any]:
    route: dict[str, Any] = {"match": f"{prefix}:*", "name": handler}
    if handler == "log":
        route["log"] = {"path": "/dev/null"} if prefix == "burst" else {}
    elif handler == "webhook":
        route["webhook"] = {"url": receiver.url}
    else:
        route["stream"] = {"name": f"{{bench}}:{prefix}"}
    return route


def _throughput(
    cluster: LocalCluster, receiver: WebhookReceiver, directory: Path, *, keys: int, runs: int
) -> list[dict[str, Any]]:
    samples: dict[str, list[float]] = {handler: [] for handler in HANDLERS}
    for run_number in range(runs):
        order = HANDLERS[run_number % 3 :] + HANDLERS[: run_number % 3]
        for handler in order:
            samples[handler].append(_one_burst(cluster, receiver, directory, handler, keys))
    log_median = statistics.median(samples["log"])
    return [
        {
            "measure": "throughput",
            "handler": handler,
            "keys": keys,
            "runs": runs,
            "events_per_s_median": round(statistics.median(rates)),
            "min": round(min(rates)),
            "max": round(max(rates)),
            "ratio_to_log": round(statistics.median(rates) / log_median, 3),
        }
        for handler, rates in samples.items()
    ]


def _one_burst(cluster: LocalCluster, receiver: WebhookReceiver, directory: Path, handler: str, keys: int) -> float:
    config = write_config(directory, cluster, routes=[_route(handler, receiver, "burst")])
    replica = Replica(handler, config, directory)
    try:
        replica.wait_ready()
        wait_for_single_leader([replica])
        due_ms = int(time.time() * 1000) + max(3000, keys // 20)
        set_keys_due_at(cluster, [f"burst:{i}".encode() for i in range(keys)], due_ms)
        wait_until(
            lambda: replica.metric("expiryd_events_processed_total", route=handler, outcome="ok") >= keys,
            timeout=180,
            interval=0.02,
            what=f"the {handler} handler to finish the burst",
        )
        return keys / (time.time() - due_ms / 1000)
    finally:
        replica.close()


def _latency(
    cluster: LocalCluster, receiver: WebhookReceiver, directory: Path, *, rate: int, seconds: float
) -> list[dict[str, Any]]:
    replicas = {
        handler: PipedReplica(handler, write_config(directory, cluster, routes=[_route(handler, receiver, "lat")]))
        for handler in HANDLERS
    }
    try:
        for replica in replicas.values():
            wait_until(replica.leads, timeout=30, what="each replica to lead")
        receiver.requests.clear()
        count = int(rate * seconds)
        start_ms = int(time.time() * 1000) + 4000 + count // 25
        keys = [f"lat:{start_ms + int(i * 1000 / rate)}:{i}".encode() for i in range(count)]
        set_keys_due_at(cluster, keys, lambda key: int(due_time(key) * 1000))
        time.sleep(max(0.0, start_ms / 1000 + seconds - time.time()))
        handled = {"log": replicas["log"].handled}
        wait_until(lambda: len(handled["log"]) >= count, timeout=30, what="the log handler to see every key")
        handled["webhook"] = _webhook_times(receiver, count)
        handled["stream"] = _stream_times(cluster, count)
    finally:
        for replica in replicas.values():
            replica.close()
    rows = []
    for handler, times in handled.items():
        late = [(t - due_time(k)) * 1000 for k, t in times.items()]
        added = [(t - handled["log"][k]) * 1000 for k, t in times.items() if k in handled["log"]]
        rows.append(
            {
                "measure": "latency",
                "handler": handler,
                "rate": rate,
                "keys": count,
                "missing": count - len(times),
                "late_p50_ms": percentile(late, 50),
                "late_p99_ms": percentile(late, 99),
                "added_vs_log_p50_ms": percentile(added, 50),
                "added_vs_log_p99_ms": percentile(added, 99),
            }
        )
    return rows


class PipedReplica:
    """An expiryd replica whose event lines are read here, as they are written, and timed."""

    def __init__(self, name: str, config: Path) -> None:
        self.port = free_port()
        self.handled: dict[bytes, float] = {}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "expiryd",
                "--id",
                name,
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            arrived = time.time()
            key = json.loads(line).get("key", "").encode()
            self.handled.setdefault(key, arrived)

    def leads(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/leader", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:  # URLError and HTTPError (503: following) are OSErrors
            return False

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def _webhook_times(receiver: WebhookReceiver, count: int) -> dict[bytes, float]:
    def times() -> dict[bytes, float]:
        return {
            event["key"].encode(): request.arrived for request in list(receiver.requests) for event in request.events
        }

    wait_until(lambda: len(times()) >= count, timeout=30, what="the webhook receiver to get every key")
    return times()


def _stream_times(cluster: LocalCluster, count: int) -> dict[bytes, float]:
    client = cluster.client()
    try:
        wait_until(lambda: client.xlen("{bench}:lat") >= count, timeout=30, what="every stream entry")
        entries = client.xrange("{bench}:lat")
    finally:
        client.close()
    return {fields[b"key"]: int(entry_id.split(b"-")[0]) / 1000 for entry_id, fields in entries}
