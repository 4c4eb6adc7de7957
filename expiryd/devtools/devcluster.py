"""``expiryd cluster``: a throwaway local Redis or Valkey Cluster of one's own, until Ctrl-C.

It starts the same :class:`~expiryd.devtools.localcluster.LocalCluster` the demo and the tests
use, prints its seed addresses, writes a config that reaches it (every expired key to a log
route), and deletes everything when stopped::

    expiryd cluster --config-out expiryd.yaml                 # 3 primaries, 3 replicas, Redis
    expiryd cluster --server valkey --replicas 0 --port 7000         # nodes on 7000, 7001, 7002
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from ..errors import RedisNotInstalled
from .localcluster import LocalCluster, Server

__all__ = ["config_text", "run_cluster"]


def config_text(seed_urls: list[str]) -> str:
    """A config for a cluster with these seeds: every expired key to a log route on standard output."""
    nodes = ", ".join(f'"{url}"' for url in seed_urls)
    return f"""# Written by `expiryd cluster` for its throwaway cluster.
redis:
  nodes: [{nodes}]
routes:
  - match: "*"
    name: all
    log: {{}}
"""


def run_cluster(
    *, server: Server, primaries: int, replicas: int, config_out: str | None, port: int | None = None
) -> int:
    try:
        cluster = LocalCluster(primaries=primaries, replicas_per_primary=replicas, server=server, port=port)
    except RedisNotInstalled as error:
        print(f"expiryd cluster: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with cluster:
        print(f"cluster up: {len(cluster.primaries())} primaries, {len(cluster.replicas())} replicas ({server})")
        print("seed nodes: " + " ".join(cluster.seed_urls))
        if config_out is not None:
            Path(config_out).write_text(config_text(cluster.seed_urls), encoding="utf-8")
            print(f"config written to {config_out}: run `expiryd --id 1 --config {config_out}`")
        print("press Ctrl-C to stop it; its data is deleted", flush=True)
        stop.wait()
    print("cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(run_cluster(server="redis", primaries=3, replicas=1, config_out=None))
