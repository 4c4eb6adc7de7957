"""``expiryd cluster``: a throwaway local cluster of one's own, and a config that reaches it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import redis

from expiryd.config import load_config

pytestmark = pytest.mark.cluster


def test_expiryd_cluster_runs_until_interrupted_and_writes_a_config_that_reaches_it(tmp_path):
    config = tmp_path / "expiryd.yaml"
    process = subprocess.Popen(
        [sys.executable, "-m", "expiryd", "cluster", "--replicas", "0", "--config-out", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("press Ctrl-C"):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        seeds = next(line for line in lines if line.startswith("seed nodes: ")).split()[2:]
        assert load_config(path=str(config), environ={}).redis.nodes == seeds
        with redis.Redis.from_url(seeds[0]) as client:
            assert b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(seeds[0], socket_connect_timeout=2) as client:
        client.ping()  # stopped and gone
