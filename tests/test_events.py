"""An event as a handler sees it: JSON for webhooks and logs, fields for streams."""

from __future__ import annotations

import base64

from expiryd.events import Event


def test_event_json_uses_key_b64_only_for_non_utf8_keys():
    text = Event(b"order:1", "n:1", 1.5, 3, "r").to_json()
    binary = Event(b"\xff\x00", "n:1", 1.5, 3, "r").to_json()
    assert text == {"key": "order:1", "kind": "expired", "node": "n:1", "term": 3, "replica": "r", "received_at": 1.5}
    assert "key" not in binary and base64.b64decode(binary["key_b64"]) == b"\xff\x00"


def test_the_event_kind_is_written_to_json_and_stream_fields():
    event = Event(b"cart:1", "n:1", 1.5, 3, "r", kind="hexpired")
    assert event.to_json()["kind"] == "hexpired"
    assert event.to_fields()["kind"] == "hexpired"
    assert Event(b"k", "n:1", 1.5, 3, "r").to_json()["kind"] == "expired"


def test_events_carry_due_at_in_json_and_stream_fields_only_when_known():
    known = Event(b"order:1", "n:1", 1.5, 3, "r", due_at=1_795_377_857.6754)
    unknown = Event(b"order:1", "n:1", 1.5, 3, "r")
    assert known.to_json()["due_at"] == 1_795_377_857.675
    assert known.to_fields()["due_at"] == "1795377857.675"
    assert "due_at" not in unknown.to_json() and "due_at" not in unknown.to_fields()
