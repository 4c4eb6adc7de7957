"""A consumer-group worker for expiryd's stream handler: read, check the term, process, acknowledge.

expiryd's ``stream`` handler appends one entry per expired key, with the fields
``key`` (raw bytes), ``node``, ``term``, ``replica``, ``received_at`` and, on a
route with a payload, ``payload``. Run as many copies of this worker as you
need, each with its own ``--consumer`` name in the same ``--group``: Redis hands
each entry to one of them (``XREADGROUP``).

**At least once, never again after an acknowledgement.** An entry is
acknowledged (``XACK``) only after it was processed. A worker that dies between
the two leaves its entries pending under its name; every worker regularly takes
over entries that have been pending longer than ``--claim-after``
(``XAUTOCLAIM``) and processes them again. So an entry can be processed twice
(when its first worker died before acknowledging it), never after it was
acknowledged. Make :func:`process` idempotent, or keyed by the entry id.

**Fencing.** ``term`` rises with every expiryd leadership term. A leader that
paused past its lease (a GC pause, a frozen VM) may wake up and append an entry
after its successor handled the same key. The worker keeps, per key, the highest
term it acted on (a sorted set, ``ZADD GT``: no script, one round trip per
batch) and skips, with an acknowledgement, an entry whose term is lower. Entries
of older terms for *other* keys are still processed: a new leader's arrival does
not make its predecessor's pending work wrong. The sorted set has one member per
key; trim it (``ZREMRANGEBYSCORE fence -inf <old term>``) if keys are never
reused.

Run it (the password comes from the environment, never the command line, where
``ps`` would show it)::

    REDIS_PASSWORD=... python examples/stream_worker.py --url redis://10.0.0.5:7000 --cluster \\
        --stream expired:orders --group billing --consumer "$(hostname)"

Each processed entry, each skipped one and each acknowledgement is one JSON
line on standard output; replace :func:`process` with your own work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError


@dataclass(frozen=True)
class Entry:
    id: bytes
    key: bytes
    term: int
    fields: dict[bytes, bytes]


@dataclass(frozen=True)
class WorkerConfig:
    stream: str
    group: str
    consumer: str
    fence: str
    batch: int = 100
    block_ms: int = 1_000
    claim_after_ms: int = 30_000
    work_seconds: float = 0.0


async def process(entry: Entry, *, config: WorkerConfig) -> None:
    """The work for one expired key: here, a JSON line. Replace it with yours."""
    if config.work_seconds:
        await asyncio.sleep(config.work_seconds)
    emit(
        {
            "event": "processed",
            "id": entry.id.decode(),
            "key": entry.key.decode("utf-8", "backslashreplace"),
            "term": entry.term,
            "consumer": config.consumer,
        }
    )


def emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def ensure_group(client: Any, config: WorkerConfig) -> None:
    """Create the consumer group at the start of the stream, unless it exists."""
    try:
        await client.xgroup_create(config.stream, config.group, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def fenced(client: Any, entries: list[Entry], *, fence: str) -> list[bool]:
    """Per entry, whether its term is below the highest term already recorded for its key (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.zadd(fence, {entry.key: entry.term}, gt=True)
        pipe.zscore(fence, entry.key)
    replies = await pipe.execute()
    return [float(score) > entry.term for entry, score in zip(entries, replies[1::2], strict=True)]


async def handle(client: Any, raw: list[tuple[bytes, dict[bytes, bytes]]], *, config: WorkerConfig) -> None:
    entries = [Entry(entry_id, fields[b"key"], int(fields[b"term"]), fields) for entry_id, fields in raw if fields]
    if entries:
        for entry, stale in zip(entries, await fenced(client, entries, fence=config.fence), strict=True):
            if stale:
                emit({"event": "stale", "id": entry.id.decode(), "term": entry.term, "consumer": config.consumer})
                continue
            await process(entry, config=config)
    ids = [entry_id for entry_id, _ in raw]
    if ids:
        await client.xack(config.stream, config.group, *ids)
        emit({"event": "acked", "ids": [entry_id.decode() for entry_id in ids], "consumer": config.consumer})


async def run(client: Any, config: WorkerConfig, *, stop: asyncio.Event) -> None:
    await ensure_group(client, config)
    claim_from = b"0-0"
    while not stop.is_set():
        # First the entries of workers that died before acknowledging them.
        claim_from, claimed, _deleted = await client.xautoclaim(
            config.stream,
            config.group,
            config.consumer,
            min_idle_time=config.claim_after_ms,
            start_id=claim_from,
            count=config.batch,
        )
        if claimed:
            await handle(client, claimed, config=config)
            continue
        reply = await client.xreadgroup(
            config.group, config.consumer, {config.stream: ">"}, count=config.batch, block=config.block_ms
        )
        for _stream, entries in reply or []:
            await handle(client, entries, config=config)


def connect(url: str, *, cluster: bool) -> Any:
    username, password = os.environ.get("REDIS_USERNAME"), os.environ.get("REDIS_PASSWORD")
    if cluster:
        return RedisCluster.from_url(url, username=username, password=password)
    return aioredis.Redis.from_url(url, username=username, password=password)


def parse_arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, WorkerConfig]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="redis:// or rediss:// URL of the server or of one cluster node")
    parser.add_argument("--cluster", action="store_true", help="the URL is a node of a Redis Cluster")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True, help="unique per worker, stable across its restarts")
    parser.add_argument("--fence", help="sorted set of the highest term per key (default: <stream>:fence)")
    parser.add_argument("--batch", type=int, default=100, help="entries per read")
    parser.add_argument("--block-ms", type=int, default=1_000, help="how long one read waits for new entries")
    parser.add_argument(
        "--claim-after-ms",
        type=int,
        default=30_000,
        help="take over another worker's entries pending this long (longer than any batch takes)",
    )
    parser.add_argument("--work-seconds", type=float, default=0.0, help="simulated work per entry, to try it out")
    args = parser.parse_args(argv)
    config = WorkerConfig(
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        fence=args.fence or f"{args.stream}:fence",
        batch=args.batch,
        block_ms=args.block_ms,
        claim_after_ms=args.claim_after_ms,
        work_seconds=args.work_seconds,
    )
    return args, config


async def main(argv: list[str] | None = None) -> int:
    args, config = parse_arguments(argv)
    client = connect(args.url, cluster=args.cluster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Finish the batch in hand, acknowledge it, then stop.
        loop.add_signal_handler(signum, stop.set)
    try:
        await run(client, config, stop=stop)
    finally:
        await client.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
