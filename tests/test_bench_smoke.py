"""The benchmark scripts still run: a seconds-long smoke run of every scenario (numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parent.parent

# Two or three scenarios at a time, each on a cluster of its own: they spend most of their time waiting
# (for replicas to start, a lease to expire, keys to fall due), and no figure is judged here.
PAIRS = (("takeover", "ontime", "throughput"), ("latency", "handlers"))


def smoke(scenarios: tuple[str, ...], directory: Path) -> dict[str, Any]:
    running = {
        scenario: subprocess.Popen(
            [sys.executable, "-m", "bench", scenario, "--smoke", "--json", str(directory / f"{scenario}.json")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for scenario in scenarios
    }
    reports = {}
    for scenario, process in running.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{scenario}:\n{output}"
        reports[scenario] = json.loads((directory / f"{scenario}.json").read_text())
    return reports


def test_benchmarks_run_in_smoke_mode(tmp_path):
    reports: dict[str, Any] = {}
    for pair in PAIRS:
        reports.update(smoke(pair, tmp_path))
    assert reports["takeover"]["machine"]["cores"] >= 1
    takeover = reports["takeover"]["results"]["takeover"]
    assert [row["variant"] for row in takeover] == ["replay on, SIGKILL"]
    assert all(row["lost"] == 0 for row in takeover)
    latency = reports["latency"]["results"]["latency"]
    assert [row["phase"] for row in latency] == ["idle", "load", "burst"]
    assert latency[1]["expiryd_missing"] == 0
    readers = {row["reader"] for row in reports["throughput"]["results"]["throughput"]}
    assert readers == {"bare redis-py subscriber", "redis-cli (C)", "expiryd (log)", "expiryd (stream)"}
    by_measure = {(row["measure"], row["handler"]): row for row in reports["handlers"]["results"]["handlers"]}
    assert set(by_measure) == {
        (measure, handler) for measure in ("throughput", "latency") for handler in ("log", "webhook", "stream")
    }
    assert all(row["missing"] == 0 for (measure, _), row in by_measure.items() if measure == "latency")
    assert reports["ontime"]["results"]["ontime"]
