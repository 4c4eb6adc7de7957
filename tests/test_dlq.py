"""``expiryd dlq``: list, show, redrive and purge dead letters, against a real cluster, replica and receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from expiryd.dlq import DeadLetter, Selection

from .harness import expire_keys, wait_for_single_leader, wait_until
from .receiver import WebhookReceiver


def dlq(config: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expiryd", "dlq", *arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def entry(id: str, *, route: str = "orders", error: str = "HTTP 400") -> DeadLetter:
    return DeadLetter.of(id, {b"route": route.encode(), b"key": b"k", b"error": error.encode(), b"attempts": b"1"})


def test_a_selection_matches_by_id_route_error_and_time():
    old, new = entry("1000-0", route="orders"), entry("9000-0", route="sessions", error="HTTP 503: later")
    assert [e.id for e in (old, new) if Selection(route="sessions").matches(e)] == ["9000-0"]
    assert [e.id for e in (old, new) if Selection(error="503").matches(e)] == ["9000-0"]
    assert [e.id for e in (old, new) if Selection(since=5.0).matches(e)] == ["9000-0"]
    assert [e.id for e in (old, new) if Selection(ids=("1000-0",)).matches(e)] == ["1000-0"]


def test_a_dead_letter_is_redriven_due_at_once_with_its_payload_under_an_id_made_from_its_own():
    letter = DeadLetter.of(
        "1700000000000-3",
        {b"route": b"orders", b"key": b"order:{1}", b"node": b"n:1", b"received_at": b"12.5", b"payload": b"{}"},
    )
    parked = letter.to_parked(now=20.0)
    assert (parked.id, parked.dead_letter_id, parked.payload) == ("dlq:1700000000000-3", "1700000000000-3", b"{}")
    assert (parked.attempts, parked.due_at, parked.first_failed_at) == (0, 20.0, 1700000000.0)


def test_purge_and_redrive_need_a_selection_and_purge_a_confirmation(tmp_path):
    config = tmp_path / "expiryd.yaml"
    config.write_text('redis: {nodes: ["redis://127.0.0.1:1"]}\nroutes: [{match: "*", log: {}}]\n')
    assert dlq(config, "redrive").returncode == 2
    refused = dlq(config, "purge", "--all")
    assert refused.returncode == 2 and "--yes" in refused.stderr


def test_dead_letters_are_listed_redriven_once_each_by_the_leader_and_purged(shared_cluster, config_for, spawn):
    prefix = f"dlq-{uuid.uuid4().hex[:6]}"
    keys = [f"{prefix}:{n}".encode() for n in range(5)]
    answer = {"status": 400}
    stream = f"{{{prefix}}}:dead-letter"
    with WebhookReceiver(respond=lambda request: answer["status"], refusal=b"unknown order") as receiver:
        route = {"match": f"{prefix}:*", "name": "orders", "webhook": {"url": receiver.url}}
        config = config_for(shared_cluster, routes=[route], dead_letter={"stream": stream})
        replica = spawn("1", config)
        replica.wait_ready()
        wait_for_single_leader([replica])
        expire_keys(shared_cluster, keys)
        wait_until(
            lambda: (
                dlq(config, "list").stdout.startswith("ID") and f"{len(keys)} entries" in dlq(config, "list").stdout
            ),
            timeout=15,
            what="every key dead-lettered",
        )

        listed = dlq(config, "list", "--json")
        assert listed.returncode == 0
        letters = [json.loads(line) for line in listed.stdout.splitlines()]
        assert sorted(letter["key"] for letter in letters) == sorted(key.decode() for key in keys)
        assert {letter["error"] for letter in letters} == {"HTTP 400: unknown order"}
        shown = dlq(config, "show", letters[0]["id"])
        assert json.loads(shown.stdout)["key"] == letters[0]["key"]

        answer["status"] = 200  # the receiver is fixed
        # A redrive of two entries, as if one had died half way, then of all: none is sent twice.
        assert dlq(config, "redrive", letters[0]["id"], letters[1]["id"]).returncode == 0
        assert dlq(config, "redrive", "--all").returncode == 0
        wait_until(lambda: dlq(config, "list").returncode == 1, timeout=20, what="the stream emptied by the leader")
        delivered = [event for event in receiver.events()]
        assert sorted(event["key"] for event in delivered) == sorted(key.decode() for key in keys)
        assert all(event["redriven"] for event in delivered)
        assert {event["term"] for event in delivered} == {int(replica.metric("expiryd_leader_term"))}

        answer["status"] = 400
        expire_keys(shared_cluster, [f"{prefix}:late".encode()])
        wait_until(lambda: dlq(config, "list").returncode == 0, timeout=15, what="one more dead letter")
        replica.terminate()  # a clean stop releases the lease: no one leads now
        refused = dlq(config, "redrive", "--all")
        assert refused.returncode == 1 and "no leader" in refused.stderr
        assert dlq(config, "purge", "--all", "--yes").returncode == 0
        assert dlq(config, "list").returncode == 1
