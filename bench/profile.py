"""Where the leader's time goes: a py-spy profile of an expiryd leader under a steady rate or a burst.

    python -m bench profile                      # 10,000 keys/s for 8 s, the bench.recorder handler
    python -m bench profile --route stream       # a 50,000-key burst through the stream handler

py-spy samples the running process from outside (no code of expiryd's
changes). The table lists the functions with the most samples of their own
("self") and the most samples anywhere on the stack ("inclusive"), in percent
of all samples taken while the process was busy.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from expiryd.devtools.localcluster import LocalCluster
from tests.harness import Replica, set_keys_due_at, wait_until, write_config

from .latency import due_time

ROUTES: dict[str, dict[str, Any]] = {
    "recorder": {"match": "*", "name": "profiled", "python": "bench.recorder:record"},
    "stream": {"match": "*", "name": "profiled", "stream": {"name": "{bench}:profiled"}},
}

# Frames on nearly every stack (start-up and the event loop), left out of the inclusive list.
_SCAFFOLDING = ("runpy", "asyncio/", "expiryd/cli.py", "expiryd/__main__.py")


def run(*, route: str, rate: int, seconds: float, burst: int, top: int = 15) -> list[dict[str, Any]]:
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    with LocalCluster() as cluster, tempfile.TemporaryDirectory(prefix="expiryd-bench-") as workdir:
        directory = Path(workdir)
        config = write_config(directory, cluster, routes=[ROUTES[route]])
        leader = Replica("leader", config, directory, env={"EXPIRYD_BENCH_TIMES": str(directory / "times.tsv")})
        try:
            wait_until(leader.leads, timeout=30, what="the replica to lead")
            start_ms = int(time.time() * 1000) + 4000 + max(burst, int(rate * seconds)) // 25  # time to write them
            if route == "stream":
                keys = [f"burst:{i}".encode() for i in range(burst)]
                set_keys_due_at(cluster, keys, start_ms)
            else:
                count = int(rate * seconds)
                keys = [f"lat:{start_ms + int(i * 1000 / rate)}:{i}".encode() for i in range(count)]
                set_keys_due_at(cluster, keys, lambda key: int(due_time(key) * 1000))
            time.sleep(max(0.0, start_ms / 1000 - time.time()))
            recorded = _record(leader.process.pid, seconds=seconds, output=directory / "profile.txt")
        finally:
            leader.close()
        return _table(recorded, top=top)


def _record(pid: int, *, seconds: float, output: Path) -> Path:
    subprocess.run(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return output


def _table(profile: Path, *, top: int) -> list[dict[str, Any]]:
    """py-spy's raw format: one line per distinct stack, ``frame;frame;...;leaf count``."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        own[frames[-1]] += int(count)
        for frame in set(frames):
            anywhere[frame] += int(count)
    total = sum(own.values())
    rows = [{"kind": "self", "percent": round(100 * n / total, 1), "function": f} for f, n in own.most_common(top)]
    ours = Counter({f: n for f, n in anywhere.items() if not any(part in f for part in _SCAFFOLDING)})
    rows += [
        {"kind": "inclusive", "percent": round(100 * n / total, 1), "function": f} for f, n in ours.most_common(top)
    ]
    return [{"kind": "samples", "percent": 100.0, "function": f"{total} samples"}, *rows]
