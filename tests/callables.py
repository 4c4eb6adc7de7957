"""Functions for the ``python`` handler in tests: most append their events as JSON lines to $EXPIRYD_TEST_OUT."""

from __future__ import annotations

import asyncio
import json
import os
import threading

from expiryd import Event, PermanentFailure


def _append(events: list[Event], handler: str) -> None:
    with open(os.environ["EXPIRYD_TEST_OUT"], "a", encoding="utf-8") as out:
        for event in events:
            out.write(
                json.dumps({**event.to_json(), "handler": handler, "thread": threading.current_thread().name}) + "\n"
            )


def record_sync(events: list[Event]) -> None:
    _append(events, "sync")


async def record_async(events: list[Event]) -> None:
    await asyncio.sleep(0)
    _append(events, "async")


async def refuse(events: list[Event]) -> None:
    """A receiver that refuses everything, as one answering 400 for a day would."""
    raise PermanentFailure("refused: unknown order")
