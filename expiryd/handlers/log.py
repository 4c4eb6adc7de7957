"""The ``log`` handler: one JSON line per event, to standard output or to a file.

    handler = LogHandler(path=None)             # standard output
    await handler.handle([event])               # {"key": "order:42", "node": ..., "term": 7, ...}
    await handler.aclose()

Standard output carries only event lines; expiryd's own log goes to standard
error, so ``expiryd ... > events.jsonl`` captures exactly the events.
"""

from __future__ import annotations

import sys
from typing import IO

from ..events import Event
from .base import encode_json

__all__ = ["LogHandler"]


class LogHandler:
    def __init__(self, *, path: str | None) -> None:
        self._owns_stream = path is not None
        self._stream: IO[str] = open(path, "a", encoding="utf-8") if path else sys.stdout  # noqa: SIM115

    async def handle(self, events: list[Event]) -> None:
        lines = [encode_json(event.to_json()) for event in events]
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()

    async def aclose(self) -> None:
        if self._owns_stream:
            self._stream.close()
