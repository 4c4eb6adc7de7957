"""Sweep: how long one orphan sweep takes over many companion keys, and what it costs Redis.

One cluster holds ``companions`` payload companions (``swb:{<n>}:payload``), all
with their key alive but ``orphans`` of them, whose key is gone. At each
``scan_rate`` a leader's :class:`expiryd.sweep.Sweeper` runs one sweep; reported
per row: the seconds until every primary's scan completed, the primaries'
CPU (``used_cpu_sys`` + ``used_cpu_user`` from ``INFO cpu``, summed) over that
time, as seconds and as percent of one core per primary, this process's CPU,
and the orphans delivered after the confirmation::

    python -m bench sweep
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from expiryd.config import RouteConfig, SweepConfig
from expiryd.connections import NodeAddress, RedisOptions
from expiryd.devtools.localcluster import LocalCluster
from expiryd.events import Expiration
from expiryd.metrics import Metrics
from expiryd.payload import PayloadKeys
from expiryd.routing import Route, Router
from expiryd.sweep import Sweeper
from expiryd.topology import Topology

_WRITE_CHUNK = 10_000
_CONFIRM_AFTER = 1.0


def run(*, companions: int, orphans: int, rates: list[int]) -> list[dict[str, Any]]:
    rows = []
    with LocalCluster() as cluster:
        _fill(cluster, companions=companions, orphans=orphans)
        for rate in rates:
            rows.append(asyncio.run(_one_sweep(cluster, rate=rate, companions=companions, orphans=orphans)))
            print(rows[-1], flush=True)
    return rows


def _fill(cluster: LocalCluster, *, companions: int, orphans: int) -> None:
    client = cluster.client()
    try:
        for start in range(0, companions, _WRITE_CHUNK):
            pipe = client.pipeline(transaction=False)
            for n in range(start, min(start + _WRITE_CHUNK, companions)):
                key = f"swb:{{{n}}}".encode()
                pipe.set(key + b":payload", b"payload", ex=3600)
                if n >= orphans:
                    pipe.set(key, b"1", ex=3600)
            pipe.execute()
    finally:
        client.close()


async def _one_sweep(cluster: LocalCluster, *, rate: int, companions: int, orphans: int) -> dict[str, Any]:
    options = RedisOptions()
    topology = Topology(seeds=[NodeAddress("127.0.0.1", cluster.nodes[0].port)], options=options)
    view = await topology.read()
    await topology.aclose()
    emitted: list[Expiration] = []

    class Leading:
        def term(self) -> int:
            return 1

    class Gate:
        def keys_in_flight(self) -> set[bytes]:
            return set()

        async def emit_swept(self, route: Route, expirations: list[Expiration]) -> None:
            emitted.extend(expirations)

    metrics = Metrics()
    route = Route(
        config=RouteConfig(match="swb:*", name="bench", payload="{key}:payload"),
        handler=None,  # type: ignore[arg-type]
        payload=PayloadKeys(template="{key}:payload", client=None),
    )
    sweeper = Sweeper(
        settings=SweepConfig(interval=3600, confirm_after=_CONFIRM_AFTER, scan_rate=rate),
        router=Router([route]),
        options=options,
        leadership=Leading(),
        view=lambda: view,
        gate=Gate(),
        metrics=metrics,
        now=time.time,
    )
    primaries = [cluster.node(str(node)) for node in sorted(view.primaries)]
    redis_before = _redis_cpu(primaries)
    process_before = time.process_time()
    started = time.monotonic()
    async with sweeper:
        while not metrics.registry.get_sample_value("expiryd_sweeps_total", {"result": "complete"}):
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        redis_seconds = _redis_cpu(primaries) - redis_before
        process_seconds = time.process_time() - process_before
        deadline = time.monotonic() + _CONFIRM_AFTER + 10
        while len(emitted) < orphans and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    return {
        "companions": companions,
        "scan_rate": rate,
        "sweep_seconds": round(seconds, 2),
        "keys_scanned": int(metrics.registry.get_sample_value("expiryd_sweep_keys_scanned_total") or 0),
        "redis_cpu_seconds": round(redis_seconds, 2),
        "redis_cpu_percent_per_primary": round(redis_seconds / seconds / len(primaries) * 100, 1),
        "sweeper_cpu_seconds": round(process_seconds, 2),
        "orphans": orphans,
        "orphans_delivered": len(emitted),
    }


def _redis_cpu(nodes: list[Any]) -> float:
    total = 0.0
    for node in nodes:
        client: redis.Redis = node.client()
        info = client.info("cpu")
        client.close()
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total
