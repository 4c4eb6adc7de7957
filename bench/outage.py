"""A receiver's outage: a webhook answering 503 for ``outage`` seconds, the leader SIGKILLed half way.

Three replicas with the default settings deliver ``rate`` keys a second to a webhook receiver that
answers 503 from the start; half way through the outage the leader is SIGKILLed, and at its end the
receiver answers 200 again. Reported: what was lost, dead-lettered and repeated, how many events the
successor parked in the retry set, and when the last event arrived after the receiver recovered::

    python -m bench outage          # 60 s at 200 keys/s: the case that dead-lettered 8,329 of 15,980
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import Replica, SteadyStream, event_key, wait_for_single_leader, wait_until, write_config
from tests.receiver import WebhookReceiver


def run(*, rate: int, outage: float) -> list[dict[str, Any]]:
    answer = {"status": 503}
    with (
        LocalCluster() as cluster,
        tempfile.TemporaryDirectory() as directory,
        WebhookReceiver(respond=lambda request: answer["status"]) as receiver,
    ):
        route = {"match": "order:*", "name": "orders", "webhook": {"url": receiver.url}}
        config = write_config(Path(directory), cluster, routes=[route])
        replicas = [Replica(str(n), config, Path(directory)) for n in (1, 2, 3)]
        try:
            for replica in replicas:
                replica.wait_ready()
            leader = wait_for_single_leader(replicas)
            with SteadyStream(cluster, prefix="order", rate=rate) as stream:
                time.sleep(outage / 2)
                leader.kill()
                successor = wait_for_single_leader([r for r in replicas if r.running], timeout=15)
                time.sleep(outage / 2)
                answer["status"] = 200
                recovered = time.monotonic()
            try:
                wait_until(
                    lambda: set(stream.keys) <= {event_key(e) for e in receiver.events()},
                    timeout=900,
                    interval=0.5,
                    what="every key delivered",
                )
            except AssertionError:
                pass
            counts = Counter(event_key(event) for event in receiver.events())
            return [
                {
                    "outage s": outage,
                    "rate": rate,
                    "keys": len(stream.keys),
                    "lost": sum(1 for key in stream.keys if not counts[key]),
                    "dead-lettered": int(
                        successor.metric("expiryd_events_processed_total", route="orders", outcome="dead_lettered")
                    ),
                    "repeated": sum(1 for key in stream.keys if counts[key] > 1),
                    "parked by the successor": int(
                        successor.metric("expiryd_events_processed_total", route="orders", outcome="parked")
                    ),
                    "last delivered after the recovery s": round(time.monotonic() - recovered, 1),
                }
            ]
        finally:
            for replica in replicas:
                replica.close()
