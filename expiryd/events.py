"""The two shapes an expired key takes on its way through expiryd.

An :class:`Expiration` is what a node subscription hears: a key name, the node
that expired it and when it arrived. An :class:`Event` is what a handler gets:
the same facts stamped by the leader gate with the leadership term (the
fencing token) and the replica that handled it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "Expiration"]


@dataclass(frozen=True, slots=True)
class Expiration:
    key: bytes
    node: str
    received_at: float


@dataclass(frozen=True, slots=True)
class Event:
    key: bytes
    node: str
    received_at: float
    term: int
    replica: str

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object.

        A key that is valid UTF-8 is sent as ``key``; any other key is sent as
        ``key_b64`` (standard base64), so binary keys survive any JSON consumer.
        """
        document: dict[str, Any] = {}
        try:
            document["key"] = self.key.decode("utf-8")
        except UnicodeDecodeError:
            document["key_b64"] = base64.b64encode(self.key).decode("ascii")
        document["node"] = self.node
        document["term"] = self.term
        document["replica"] = self.replica
        document["received_at"] = self.received_at
        return document
