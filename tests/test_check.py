"""``expiryd check --probe``: each route's target reached, and the one that cannot be named."""

from __future__ import annotations

import subprocess
import sys

from .harness import free_port, write_config
from .receiver import WebhookReceiver


def check(config, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expiryd", "check", *flags, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probe_reaches_each_routes_target_and_names_the_one_that_fails(shared_cluster, tmp_path):
    closed = free_port()  # nothing listens here
    with WebhookReceiver() as receiver:
        routes = [
            {"match": "live:*", "name": "live", "webhook": {"url": receiver.url}},
            {"match": "dead:*", "name": "dead", "webhook": {"url": f"http://127.0.0.1:{closed}/x"}},
            {"match": "s:*", "name": "stream", "stream": {"name": "probe:stream"}},
        ]
        config = write_config(tmp_path, shared_cluster, routes=routes)
        plain = check(config)
        probed = check(config, "--probe")
        assert receiver.requests == []  # a probe connects, and sends nothing
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert probed.returncode == 1
    lines = [line for line in probed.stdout.splitlines() if line.startswith("probe")]
    assert lines[0].startswith("probe    route live: webhook 127.0.0.1:") and "accepts connections" in lines[0]
    assert lines[1].startswith("probe    route dead: unreachable: ")
    assert lines[2] == "probe    route stream: stream 'probe:stream' answers (not created yet)"


def test_check_says_when_the_dead_letter_stream_shares_the_lease_primary(shared_cluster, tmp_path):
    lease_tag = "{t-check}"
    apart = write_config(tmp_path, shared_cluster, election={"lock_name": f"{lease_tag}:leader"})
    together = write_config(
        tmp_path,
        shared_cluster,
        election={"lock_name": f"{lease_tag}:leader"},
        dead_letter={"stream": f"{lease_tag}:dead-letter"},
    )
    apart_line = next(line for line in check(apart).stdout.splitlines() if line.startswith("dead"))
    together_line = next(line for line in check(together).stdout.splitlines() if line.startswith("dead"))
    assert "{expiryd:deadletter}" in apart_line and "lease" not in apart_line
    assert "the lease's primary too" in together_line
