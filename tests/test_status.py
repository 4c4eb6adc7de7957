"""``expiryd status`` and the status page: who leads, who hears which primary, what needs attention."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from expiryd.status import Primary, ReplicaView, Status, attention, render_text
from expiryd.statuspage import render_page

from .harness import expire_keys, primary_away_from_the_lease, wait_for_single_leader, wait_until
from .receiver import WebhookReceiver

HOSTILE = "<script>document.title='owned'</script>"


def replica(id: str, *, term: int | None = None, heard: float | None = 30.0) -> ReplicaView:
    return ReplicaView(
        id=id, term=term, eligible=True, deferring_for=None, history={"n:1": heard}, scheduled=5, listen=None
    )


def primary(address: str = "n:1", *, heard_by: list[str] | None = None, ok: bool = True) -> Primary:
    return Primary(
        address=address,
        slots=16384,
        heard_by=["1"] if heard_by is None else heard_by,
        notifications="ok" if ok else "'' lacks Ex",
        notifications_ok=ok,
        mark_age=1.0,
    )


def status(replicas: list[ReplicaView], primaries: list[Primary]) -> Status:
    return Status(at=100.0, replicas=replicas, primaries=primaries, dead_letters=0, dead_letter_stream="dead")


def test_a_deployment_with_a_leader_that_hears_every_primary_needs_no_attention():
    assert attention(status([replica("1", term=7), replica("2")], [primary()])) == []


def test_no_leader_a_primary_nobody_hears_and_notifications_off_each_need_attention():
    lines = attention(status([replica("1")], [primary("n:1", heard_by=[]), primary("n:2", ok=False)]))
    assert lines == [
        "no leader: no replica holds the lease",
        "primary n:1 (16384 slots): no replica hears it",
        "primary n:2: notifications '' lacks Ex",
    ]


def test_the_text_view_names_the_leader_and_its_term():
    text = render_text(status([replica("1", term=7)], [primary()]))
    assert text.splitlines()[0] == "leader    1 (term 7)"


def test_the_text_view_shows_what_each_replica_holds_of_its_memory_budget():
    held = dataclasses.replace(replica("1", term=7), memory=60 << 20, memory_budget=256 << 20)
    assert "memory 60 of 256 MB" in render_text(status([held], [primary()]))


def test_the_page_escapes_what_comes_from_redis():
    page = render_page(status([replica(HOSTILE, term=7)], [primary()]), [], replica="1")
    assert HOSTILE not in page and "&lt;script&gt;" in page


def expiryd(*arguments: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expiryd", *arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_names_the_leader_and_a_primary_no_replica_hears(patient_cluster, config_for, spawn):
    cluster = patient_cluster
    config = config_for(cluster)
    leader = spawn("1", config)
    leader.wait_ready()
    wait_for_single_leader([leader])
    wait_until(lambda: expiryd("status", config=config).returncode == 0, timeout=15, what="a healthy status")
    healthy = json.loads(expiryd("status", "--json", config=config).stdout)
    assert healthy["leader"]["id"] == "1" and healthy["attention"] == []
    assert healthy["replicas"][0]["memory_budget"] == 256 << 20

    node = primary_away_from_the_lease(cluster, leader)
    cluster.freeze(node)
    runs: list[subprocess.CompletedProcess[str]] = []

    def names_the_frozen_primary() -> bool:
        runs.append(expiryd("status", config=config))
        return f"primary {node.address} (" in runs[-1].stdout

    try:
        # The replica reports once a second: the status shows the loss from its next report on.
        wait_until(names_the_frozen_primary, timeout=30, what="the status to name the frozen primary")
    finally:
        cluster.thaw(node)
    unheard = runs[-1]
    assert unheard.returncode == 1
    assert unheard.stdout.splitlines()[0].startswith("leader    1 (term "), unheard.stdout + unheard.stderr
    assert f"primary {node.address} (" in unheard.stdout and "no replica hears it" in unheard.stdout


def test_the_status_page_in_a_headless_browser_shows_the_leader_and_a_hostile_key_as_text(
    patient_cluster, config_for, spawn, tmp_path
):
    assert shutil.which("chromium"), "chromium is missing: make setup installs it"
    cluster = patient_cluster
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    with WebhookReceiver(respond=lambda request: 400, refusal=b"<b>refused</b>") as receiver:
        route = {"match": f"{prefix}:*", "name": "refused", "webhook": {"url": receiver.url}}
        config = config_for(cluster, routes=[route], dead_letter={"stream": f"{{{prefix}}}:dead-letter"})
        leader = spawn("1", config)
        leader.wait_ready()
        wait_for_single_leader([leader])
        expire_keys(cluster, [f"{prefix}:{HOSTILE}".encode()])
        wait_until(lambda: receiver.requests, timeout=15, what="the hostile key's refusal")
        url = f"http://127.0.0.1:{leader.port}/"
        refusal = "HTTP 400: &lt;b&gt;refused&lt;/b&gt;"  # what the receiver said, escaped
        # The page shows what the replicas last reported, up to a second old: wait for the leader's report.
        wait_until(
            lambda: refusal in (page := leader.http("/")[1]) and "leader <strong>1</strong>" in page,
            timeout=15,
            what="the leader and the dead letter on the page",
        )
        browser = [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--user-data-dir=" + str(tmp_path / "profile"),
        ]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
        screenshot = tmp_path / "status-page.png"
        subprocess.run(
            [*browser, f"--screenshot={screenshot}", "--window-size=1280,900", url], capture_output=True, timeout=60
        )
    term = int(leader.metric("expiryd_leader_term"))
    assert f"leader <strong>1</strong>, term <strong>{term}</strong>" in dom
    assert "&lt;script&gt;document.title='owned'&lt;/script&gt;" in dom  # shown as text
    assert "<title>expiryd status</title>" in dom  # the key's script never ran
    assert refusal in dom
    assert screenshot.stat().st_size > 10_000
