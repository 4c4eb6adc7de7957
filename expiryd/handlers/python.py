"""The ``python`` handler: call a function of yours with each batch of events.

The function is named ``"package.module:function"`` and takes one argument, a
list of :class:`expiryd.Event`. An ``async def`` function runs on the
event loop; a plain function runs in a worker thread, so it may block without
stalling expiryd. Raising retries the batch; raising
:class:`expiryd.PermanentFailure` dead-letters it at once::

    # myapp/expiry.py
    def cancel_orders(events):
        for event in events:
            orders.cancel(event.key.decode(), fencing_token=event.term)

    handler = PythonHandler(function=load_callable("myapp.expiry:cancel_orders"))
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from ..events import Event

__all__ = ["PythonHandler"]


class PythonHandler:
    def __init__(self, *, function: Callable[[list[Event]], Any]) -> None:
        self._function = function
        self._is_async = inspect.iscoroutinefunction(function)

    async def handle(self, events: list[Event]) -> None:
        if self._is_async:
            await self._function(events)
            return
        result = await asyncio.to_thread(self._function, events)
        if inspect.isawaitable(result):
            await result

    async def aclose(self) -> None:
        return None
