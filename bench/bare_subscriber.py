"""The baseline: a minimal asyncio redis-py (hiredis) PSUBSCRIBE reader on every primary that only counts.

    python -m bench.bare_subscriber --expect 200000 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002

Prints ``ready`` once subscribed, then one JSON line when ``--expect`` messages have arrived
(or ``--seconds`` have passed).
With ``--times FILE`` it also writes each key and the time it arrived, for paired latency figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

import redis.asyncio as aioredis


async def count(
    address: str, counter: list[int], expect: int, done: asyncio.Event, times: list[tuple[bytes, float]] | None
) -> None:
    host, port = address.rsplit(":", 1)
    pubsub = aioredis.Redis(host=host, port=int(port)).pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe("__keyevent@0__:expired")
    async for message in pubsub.listen():
        if times is not None:
            times.append((message["data"], time.time()))
        counter[0] += 1
        if counter[0] >= expect:
            done.set()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--times", default=None, help="write 'key<TAB>arrival' lines here")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long, even short of --expect")
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    counter, done = [0], asyncio.Event()
    times: list[tuple[bytes, float]] | None = [] if args.times else None
    tasks = [asyncio.create_task(count(node, counter, args.expect, done, times)) for node in args.nodes]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), args.seconds)
    if times is not None:
        with open(args.times, "wb") as out:
            out.writelines(b"%s\t%.6f\n" % (key, arrived) for key, arrived in times)
    print(json.dumps({"done_at": time.time(), "count": counter[0]}), flush=True)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
