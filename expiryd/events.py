"""The shapes an expired key takes on its way through expiryd.

An :class:`Expiration` is what a node subscription hears: a key name, the node
that expired it, when it arrived, and its ``kind``: the keyevent that announced
it, ``expired`` (the key is gone) or ``hexpired`` (one or more fields of the
hash at that key expired; the key may still exist). The leader gate adds when
the key was due, if the schedule knew (see :mod:`expiryd.scheduler`). An
:class:`Event` is what a handler gets: the same facts stamped by the leader
with the leadership term (the fencing token) and the replica that handled it,
and, on a route that fetches one, the payload read from the key's companion
key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

__all__ = ["EXPIRED", "HEXPIRED", "KINDS", "Event", "Expiration", "binary_field"]


# Neither class is frozen: one of each is made for every event, and a frozen
# dataclass's __init__ (a setattr through object per field) costs about four
# times as much. Treat both as read-only.


EXPIRED = "expired"
HEXPIRED = "hexpired"
KINDS = (EXPIRED, HEXPIRED)


@dataclass(slots=True)
class Expiration:
    key: bytes
    node: str
    received_at: float
    kind: str = EXPIRED
    # Epoch seconds; set once by the leader gate, None when the schedule did not know the key.
    due_at: float | None = None
    # Found by the orphan sweep (expiryd.sweep): no subscriber heard its key expire.
    swept: bool = False


# What an expiration held in memory costs beyond its key's bytes: the object, its bytes object and
# float, and a deque's slot (tracemalloc: 170 bytes with a 25-byte key). The node's name is shared
# by all of a node's events.
_EXPIRATION_OVERHEAD = 145


def event_bytes(expiration: Expiration) -> int:
    """About how much memory ``expiration`` takes while it is queued or kept for replay."""
    return _EXPIRATION_OVERHEAD + len(expiration.key)


@dataclass(slots=True)
class Event:
    key: bytes
    node: str
    received_at: float
    term: int
    replica: str
    # Only on routes with a payload template; None there means the payload key was missing.
    payload: bytes | None = None
    has_payload: bool = False
    kind: str = EXPIRED
    # When the key's TTL ran out (epoch seconds, ms precision), if the schedule knew it.
    due_at: float | None = None
    # Delivered because the orphan sweep found its companion key left behind, not from an expired event.
    swept: bool = False
    # Sent again from the dead-letter stream by ``expiryd dlq redrive``.
    redriven: bool = False
    # A payload too large to copy: the name its companion was set aside under, and its length.
    payload_ref: bytes | None = None
    payload_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object.

        A key that is valid UTF-8 is sent as ``key``; any other key is sent as
        ``key_b64`` (standard base64), so binary keys survive any JSON consumer.
        The payload follows the same rule (``payload`` or ``payload_b64``), and
        is ``null`` when the payload key did not exist. ``kind`` is ``expired``
        or ``hexpired``. ``due_at`` is present when the key's due time was known;
        ``swept`` (``true``) only when the orphan sweep found the event; ``redriven``
        (``true``) only when ``expiryd dlq redrive`` sent it again from the dead-letter stream.
        """
        document: dict[str, Any] = {}
        binary_field(document, "key", self.key)
        document["kind"] = self.kind
        document["node"] = self.node
        document["term"] = self.term
        document["replica"] = self.replica
        document["received_at"] = self.received_at
        if self.due_at is not None:
            document["due_at"] = round(self.due_at, 3)
        if self.swept:
            document["swept"] = True
        if self.redriven:
            document["redriven"] = True
        if self.has_payload:
            if self.payload is None:
                document["payload"] = None
            else:
                binary_field(document, "payload", self.payload)
        return document

    def to_fields(self) -> dict[str, bytes | str]:
        """The event as Redis stream entry fields: the key and payload as raw bytes, the rest as text."""
        fields: dict[str, bytes | str] = {
            "key": self.key,
            "kind": self.kind,
            "node": self.node,
            "term": str(self.term),
            "replica": self.replica,
            "received_at": repr(self.received_at),
        }
        if self.due_at is not None:
            fields["due_at"] = f"{self.due_at:.3f}"
        if self.swept:
            fields["swept"] = "1"
        if self.redriven:
            fields["redriven"] = "1"
        if self.payload is not None:
            fields["payload"] = self.payload
        if self.payload_bytes is not None:
            fields["payload_bytes"] = str(self.payload_bytes)
            if self.payload_ref is not None:
                fields["payload_ref"] = self.payload_ref
        return fields


def printable(key: bytes) -> str:
    """A key as a terminal or a page may show it: UTF-8 with control characters escaped, else its repr."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return repr(key)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def binary_field(document: dict[str, Any], name: str, value: bytes) -> None:
    """Set ``document[name]`` to ``value`` as text, or ``document[name + "_b64"]`` when it is not UTF-8."""
    try:
        document[name] = value.decode("utf-8")
    except UnicodeDecodeError:
        document[f"{name}_b64"] = base64.b64encode(value).decode("ascii")
