"""Running coroutines that loop forever as one unit, for the components that own several.

A component whose work is a few endless loops (a node subscription's reader and
watchdog; the scheduler's lookups, firing and recovery) runs them as one task:
cancelling that task cancels them all, and the first that fails ends the rest
and surfaces its error to whoever awaits the task::

    task = asyncio.create_task(until_first_failure(read(), watch()))
    ...
    task.cancel()       # every loop is cancelled and awaited
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["until_first_failure"]


async def until_first_failure(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run coroutines that loop forever; when one raises, cancel the rest and re-raise."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
