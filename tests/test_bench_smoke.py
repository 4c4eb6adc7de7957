"""The benchmark scripts still run: a seconds-long smoke run of every scenario (numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parent.parent


def test_benchmarks_run_in_smoke_mode(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--json", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(output.read_text())
    assert report["machine"]["cores"] >= 1
    takeover = report["results"]["takeover"]
    assert [row["variant"] for row in takeover] == ["replay on, SIGKILL"]
    assert all(row["lost"] == 0 for row in takeover)
    latency = report["results"]["latency"]
    assert [row["phase"] for row in latency] == ["idle", "load", "burst"]
    assert latency[1]["expiryd_missing"] == 0
    readers = {row["reader"] for row in report["results"]["throughput"]}
    assert readers == {"bare redis-py subscriber", "redis-cli (C)", "expiryd (log)", "expiryd (stream)"}
    by_measure = {(row["measure"], row["handler"]): row for row in report["results"]["handlers"]}
    assert set(by_measure) == {
        (measure, handler) for measure in ("throughput", "latency") for handler in ("log", "webhook", "stream")
    }
    assert all(row["missing"] == 0 for (measure, _), row in by_measure.items() if measure == "latency")
