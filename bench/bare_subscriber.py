"""The baseline: a minimal asyncio redis-py (hiredis) PSUBSCRIBE reader on every primary that only counts.

    python -m bench.bare_subscriber --expect 200000 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002

Prints ``ready`` once subscribed, then one JSON line when ``--expect`` messages have arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis.asyncio as aioredis


async def count(address: str, counter: list[int], expect: int, done: asyncio.Event) -> None:
    host, port = address.rsplit(":", 1)
    pubsub = aioredis.Redis(host=host, port=int(port)).pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe("__keyevent@0__:expired")
    async for _ in pubsub.listen():
        counter[0] += 1
        if counter[0] >= expect:
            done.set()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    counter, done = [0], asyncio.Event()
    tasks = [asyncio.create_task(count(node, counter, args.expect, done)) for node in args.nodes]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await done.wait()
    print(json.dumps({"done_at": time.time(), "count": counter[0]}), flush=True)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
