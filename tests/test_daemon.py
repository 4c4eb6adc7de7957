"""The daemon's wiring: which services run, and the order they start and stop in."""

from __future__ import annotations

from pathlib import Path

from expiryd.config import load_config
from expiryd.daemon import Daemon

CONFIG = """
redis:
  nodes: ["redis://127.0.0.1:7000"]
routes:
  - match: "order:*"
    payload: "{key}:payload"
    log: {}
"""


def daemon(tmp_path: Path, text: str = CONFIG) -> Daemon:
    path = tmp_path / "expiryd.yaml"
    path.write_text(text, encoding="utf-8")
    return Daemon(load_config(path=str(path), environ={}))


def test_services_stop_in_the_order_that_loses_least(tmp_path):
    # They stop in the reverse order: the sweeper, then the gate drains the routes, then the recorder
    # records what they finished, then the coverage report is withdrawn before the lease is released,
    # and the subscriptions close last.
    stopping = [service.name for service in reversed(daemon(tmp_path).services())]
    assert stopping == [
        "sweeper",
        "leader gate",
        "progress recorder",
        "scheduler",
        "coverage reporter",
        "election",
        "fan-in",
    ]


def test_without_a_payload_route_or_a_schedule_there_is_no_sweeper_and_no_scheduler(tmp_path):
    text = CONFIG.replace('    payload: "{key}:payload"\n', "") + "schedule:\n  enabled: false\n"
    names = [service.name for service in daemon(tmp_path, text).services()]
    assert "sweeper" not in names and "scheduler" not in names
