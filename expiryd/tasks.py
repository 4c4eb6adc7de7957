"""One lifecycle for every long-running part of expiryd: ``start()``, then ``aclose()``.

A :class:`Service` owns exactly one task, made from its ``_run()`` coroutine.
``start()`` creates it; ``aclose()`` cancels it, waits for it, then lets the
service release what it holds (``_close()``). ``async with`` does both, and a
:class:`~expiryd.daemon.Daemon` closes its services in order with an
``AsyncExitStack``. The task never ends by itself unless something failed, so
whoever owns the service watches ``service.task`` for that::

    async with Scheduler(...) as scheduler:      # start()
        await asyncio.wait([scheduler.task, stop_requested])
    # aclose(): the task is cancelled and awaited, the scheduler's clients closed

A service whose work is several endless loops runs them as one task with
:func:`until_first_failure`: cancelling it cancels them all, and the first that
fails ends the rest and surfaces its error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Self

__all__ = ["Service", "cancel_and_wait", "until_first_failure"]

_CANCEL_AGAIN_AFTER = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel the tasks and wait until every one has ended; their errors are not raised."""
    pending = {task for task in tasks if task is not None}
    while pending:
        for task in pending:
            task.cancel()
        # Python 3.11's wait_for swallows a cancellation that races the completion of what it waits
        # for, and a loop around it then runs on: cancel whatever is still running again.
        done, pending = await asyncio.wait(pending, timeout=_CANCEL_AGAIN_AFTER)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved, so that asyncio does not log it as never retrieved


async def until_first_failure(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run coroutines that loop forever; when one raises, cancel the rest and re-raise."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        await cancel_and_wait(tasks)


class Service:
    """A part of expiryd that runs one task from ``start()`` until ``aclose()``."""

    #: The task's name, in logs and in asyncio's debug output.
    name = "service"

    _task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None]:
        """The running task: it ends only when the service failed, or after ``aclose()``."""
        if self._task is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._task

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def aclose(self) -> None:
        """Stop the task, wait for it, then release what the service holds."""
        task, self._task = self._task, None
        await cancel_and_wait([task])
        await self._close()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        """What to release once the task has ended (connections, a lease); nothing by default."""
