"""``expiryd check``: what a replica would see, without changing anything.

It reads the topology from the seed nodes, the ``notify-keyspace-events``
setting of every primary and the state of the lease, and prints one line per
finding. It changes nothing, not even a missing notification setting. With
``--probe`` it also reaches each route's target: a webhook's host must resolve
and accept a connection (no request is sent), a stream's server must answer and
the key must be a stream or absent, a log file's directory must be writable.

Exit codes: 0 when a replica would work; 1 when something would stop events
from arriving (a primary without notifications that expiryd cannot or may not
repair, a primary that may evict keys, a cluster not in ``ok`` state); 2 when
no seed node can be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from .config import Config, RouteConfig, StreamConfig
from .connections import REDIS_FAILURES, NodeAddress, RedisOptions, describe_error
from .errors import TopologyUnavailable
from .eviction import EvictionPolicy, read_eviction_policy
from .keys import lease_key, term_key
from .notifications import NotificationStatus, ensure_notifications, required_classes
from .topology import ClusterView, Topology, owner_client

__all__ = ["run_check"]


def run_check(config: Config, *, probe: bool = False) -> int:
    return asyncio.run(_check(config, probe=probe))


async def _check(config: Config, *, probe: bool) -> int:
    options = RedisOptions.from_config(config.redis)
    seeds = [NodeAddress.from_url(url) for url in config.redis.nodes]
    topology = Topology(seeds=seeds, options=options)
    try:
        view = await topology.read()
    except TopologyUnavailable as error:
        print(
            f"expiryd: config error: {config.source}: redis.nodes: cannot reach any seed node ({error})",
            file=sys.stderr,
        )
        return 2
    finally:
        await topology.aclose()
    problems = 0
    _line("config", f"{config.source}: ok, {len(config.routes)} route(s), replica id {config.id}")
    problems += await _check_cluster(view, options)
    required = required_classes(
        schedule=config.schedule.enabled, kinds=[kind for route in config.routes for kind in route.events]
    )
    for primary in sorted(view.primaries):
        problems += await _check_primary(
            primary, view, options, repair=config.redis.ensure_notifications, required=required
        )
    await _report_lease(config, options, seeds)
    _report_dead_letters(config, view)
    if probe:
        for route in config.routes:
            problems += await _probe(route, config, view, options, seeds)
    _line("result", "ok" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


async def _check_cluster(view: ClusterView, options: RedisOptions) -> int:
    client = options.client(view.answered_by)
    try:
        info = await client.execute_command("CLUSTER", "INFO")
    finally:
        await client.aclose()
    text = info.decode() if isinstance(info, bytes) else str(info)
    state = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cluster_state:")), "unknown"
    )
    replicas = sum(len(view.replicas_of(p)) for p in view.primaries)
    _line(
        "cluster", f"state {state}, {len(view.primaries)} primaries, {replicas} replicas (read from {view.answered_by})"
    )
    return 0 if state == "ok" and view.primaries else 1


async def _check_primary(
    primary: NodeAddress, view: ClusterView, options: RedisOptions, *, repair: bool, required: str
) -> int:
    client = options.client(primary)
    eviction: EvictionPolicy | None = None
    try:
        status = await ensure_notifications(client, repair=False, required=required)
        eviction = await read_eviction_policy(client)
    except REDIS_FAILURES as error:
        status = None
        note = f"unreachable ({error.__class__.__name__})"
    finally:
        await client.aclose()
    replicas = ",".join(str(r) for r in view.replicas_of(primary)) or "none"
    if status is not None:
        note = _notification_note(status, repair=repair)
    _line("primary", f"{primary}  slots {view.slot_count(primary)}  replicas {replicas}  notifications {note}")
    if eviction is not None and eviction.risk is not None:
        _line(
            "eviction",
            f"{primary}  maxmemory-policy {eviction.name} with maxmemory {eviction.maxmemory}: may evict "
            f"{eviction.risk}; set maxmemory-policy noeviction",
        )
    if status is None or status.refused:
        return 1
    evicts = int(eviction is not None and eviction.risk is not None)
    return evicts + (0 if status.ok or repair or not status.expired_missing else 1)


def _notification_note(status: NotificationStatus, *, repair: bool) -> str:
    if status.refused:
        return f"unknown: CONFIG refused; make sure notify-keyspace-events includes {status.required}"
    if status.ok:
        return f"{status.before!r} ok"
    missing = "Ex" if status.expired_missing else status.missing
    if repair:
        return f"{status.before!r} lacks {missing}: a replica will enable it (redis.ensure_notifications)"
    if status.expired_missing:
        return f"{status.before!r} lacks Ex and redis.ensure_notifications is off: no events from this node"
    return (
        f"{status.before!r} lacks {missing} and redis.ensure_notifications is off: "
        "keys fire on Redis's own timing, not on time"
    )


async def _report_lease(config: Config, options: RedisOptions, seeds: list[NodeAddress]) -> None:
    settings = config.election
    where = f"{len(settings.masters)} independent masters" if settings.masters else "the cluster"
    client: Any = options.client_for_url(settings.masters[0]) if settings.masters else options.cluster_client(seeds)
    try:
        holder_ttl = await client.pttl(lease_key(settings.lock_name))
        term = await client.get(term_key(settings.lock_name))
    except REDIS_FAILURES as error:
        _line("lease", f"{settings.lock_name!r} on {where}: cannot read ({error.__class__.__name__})")
        return
    finally:
        await client.aclose()
    state = f"held, {holder_ttl} ms left" if holder_ttl > 0 else "free"
    _line("lease", f"{settings.lock_name!r} on {where}: {state}, last term {int(term or 0)}")


def _report_dead_letters(config: Config, view: ClusterView) -> None:
    stream = config.dead_letter.stream
    owner = view.owner(stream)
    note = ""
    if not config.election.masters and owner == view.owner(lease_key(config.election.lock_name)):
        note = (
            ": the lease's primary too, so a receiver refusing events for long fills the primary the lease "
            "lives on; give dead_letter.stream a hash tag on another primary"
        )
    _line("dead", f"{stream!r} on {owner}, at most {config.dead_letter.max_bytes // (1 << 20)} MB{note}")


async def _probe(
    route: RouteConfig, config: Config, view: ClusterView, options: RedisOptions, seeds: list[NodeAddress]
) -> int:
    """Reach ``route``'s target; print one line; 1 when it cannot be reached."""
    name = route.label
    try:
        if route.webhook is not None:
            found = await _probe_webhook(route.webhook.url, timeout=config.redis.connect_timeout)
        elif route.stream is not None:
            found = await _probe_stream(route.stream, view=view, options=options, seeds=seeds)
        elif route.log is not None and route.log.path is not None:
            directory = os.path.dirname(os.path.abspath(route.log.path))
            if not os.access(directory, os.W_OK):
                raise OSError(f"cannot write in {directory}")
            found = f"log file {route.log.path}: its directory is writable"
        else:
            return 0  # standard output, or a python function already imported
    except (OSError, TimeoutError, *REDIS_FAILURES) as error:
        _line("probe", f"route {name}: unreachable: {describe_error(error)}")
        return 1
    _line("probe", f"route {name}: {found}")
    return 0


async def _probe_webhook(url: str, *, timeout: float) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    started = time.perf_counter()
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return f"webhook {host}:{port} accepts connections ({(time.perf_counter() - started) * 1000:.0f} ms)"


async def _probe_stream(
    stream: StreamConfig, *, view: ClusterView, options: RedisOptions, seeds: list[NodeAddress]
) -> str:
    if stream.url is not None:
        client: Any = options.client_for_url(stream.url)
    else:
        client = owner_client(stream.name, view=view, options=options, seeds=seeds)
    try:
        kind = await client.type(stream.name)
    finally:
        await client.aclose()
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in ("stream", "none"):
        raise OSError(f"{stream.name!r} holds a {kind}, not a stream")
    return f"stream {stream.name!r} answers ({'exists' if kind == 'stream' else 'not created yet'})"


def _line(topic: str, text: str) -> None:
    print(f"{topic:<8} {text}")
