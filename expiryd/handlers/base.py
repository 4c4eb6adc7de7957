"""What every handler is: an object that finishes a batch of events or raises.

A handler's ``handle`` either returns, and every event in the batch is done,
or raises. Any exception is retried with backoff, up to the route's
``retry.max_attempts``, and then the batch goes to the dead-letter stream. A
:class:`PermanentFailure` skips the retries: the batch goes to the dead-letter
stream at once. A :class:`RetryLater` asks for at least ``after`` seconds
before the next attempt::

    async def handle(events: list[Event]) -> None:
        if not authorised:
            raise PermanentFailure("HTTP 403")        # retrying cannot help
        raise RetryLater("HTTP 429", after=2.0)       # the receiver asked for a pause
"""

from __future__ import annotations

import json
from typing import Protocol

from ..errors import PermanentFailure, RetryLater
from ..events import Event

__all__ = ["Handler", "PermanentFailure", "RetryLater", "encode_json"]


class Handler(Protocol):
    async def handle(self, events: list[Event]) -> None: ...

    async def aclose(self) -> None: ...


# An encoder of our own: importing pottery wraps json.dumps for every caller, which
# costs more than the encoding itself on the hot path.
encode_json = json.JSONEncoder(ensure_ascii=False).encode
