"""The example consumer-group worker (examples/stream_worker.py) against the real cluster.

Entries are written as expiryd's stream handler writes them (``Event.to_fields``);
the workers run as real processes, and one is killed with SIGKILL in the middle
of a batch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from expiryd.devtools.localcluster import LocalCluster
from expiryd.events import Event

from .harness import wait_until

WORKER = Path(__file__).parent.parent / "examples" / "stream_worker.py"


class Worker:
    def __init__(self, cluster: LocalCluster, directory: Path, *, stream: str, consumer: str, **options: Any) -> None:
        self.output = directory / f"{consumer}.jsonl"
        arguments = [
            sys.executable,
            str(WORKER),
            "--url",
            cluster.seed_urls[0],
            "--cluster",
            "--stream",
            stream,
            "--group",
            "workers",
            "--consumer",
            consumer,
        ]
        for name, value in options.items():
            arguments += [f"--{name.replace('_', '-')}", str(value)]
        with self.output.open("wb") as output:
            self.process = subprocess.Popen(arguments, stdout=output, stderr=subprocess.PIPE)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output.read_text().splitlines() if line.endswith("}")]

    def processed(self) -> list[str]:
        return [line["id"] for line in self.lines() if line["event"] == "processed"]

    def acked(self) -> set[str]:
        return {entry_id for line in self.lines() if line["event"] == "acked" for entry_id in line["ids"]}

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        _, errors = self.process.communicate(timeout=10)
        assert self.process.returncode == 0, errors.decode()


def add_entries(client: redis.RedisCluster, stream: str, events: list[Event]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, event.to_fields())
    return [entry_id.decode() for entry_id in pipe.execute()]


def all_handled(client: redis.RedisCluster, stream: str) -> bool:
    """Every entry delivered to the group (lag 0) and acknowledged (nothing pending)."""
    groups = client.xinfo_groups(stream)  # none until the first worker created it
    return bool(groups and groups[0]["lag"] == 0 and groups[0]["pending"] == 0)


def event(key: bytes, term: int) -> Event:
    return Event(key, "127.0.0.1:7000", time.time(), term, "replica-1")


def test_two_workers_process_every_entry_and_none_again_after_its_ack_when_one_is_killed_mid_batch(
    shared_cluster: LocalCluster, tmp_path: Path
):
    stream = f"{{{uuid.uuid4().hex[:8]}}}:expired"
    client = shared_cluster.client()
    ids = add_entries(client, stream, [event(f"order:{i}".encode(), 3) for i in range(600)])
    options = {"stream": stream, "batch": 20, "block_ms": 100, "claim_after_ms": 500, "work_seconds": 0.005}
    doomed = Worker(shared_cluster, tmp_path, consumer="doomed", **options)
    survivor = Worker(shared_cluster, tmp_path, consumer="survivor", **options)
    try:
        wait_until(lambda: len(doomed.processed()) >= 50, timeout=30, what="the first worker to be under way")
        doomed.process.kill()
        doomed.process.wait()
        wait_until(lambda: all_handled(client, stream), timeout=60, what="every entry handled and acknowledged")
        survivor.stop()
    finally:
        for worker in (doomed, survivor):
            if worker.process.poll() is None:
                worker.process.kill()
        client.close()

    processed = Counter(doomed.processed() + survivor.processed())
    assert set(processed) == set(ids)
    # Nothing is processed again once acknowledged: what the killed worker acknowledged was
    # processed once, and the survivor processed nothing twice.
    assert all(processed[entry_id] == 1 for entry_id in doomed.acked())
    assert len(survivor.processed()) == len(set(survivor.processed()))
    # What the killed worker had processed but not acknowledged was taken over and processed again.
    taken_over = set(doomed.processed()) - doomed.acked()
    assert taken_over
    assert {entry_id for entry_id, count in processed.items() if count > 1} == taken_over
    assert taken_over <= set(survivor.processed())


def test_an_entry_whose_term_is_below_one_already_processed_for_its_key_is_skipped(
    shared_cluster: LocalCluster, tmp_path: Path
):
    stream = f"{{{uuid.uuid4().hex[:8]}}}:expired"
    client = shared_cluster.client()
    ids = add_entries(
        client,
        stream,
        [event(b"order:1", 5), event(b"order:1", 4), event(b"order:2", 4), event(b"order:1", 5), event(b"order:1", 6)],
    )
    worker = Worker(shared_cluster, tmp_path, consumer="only", stream=stream, block_ms=100)
    try:
        wait_until(lambda: all_handled(client, stream), timeout=30, what="every entry handled")
    finally:
        worker.stop()
        client.close()
    assert worker.processed() == [ids[0], ids[2], ids[3], ids[4]]
    assert [line["id"] for line in worker.lines() if line["event"] == "stale"] == [ids[1]]
