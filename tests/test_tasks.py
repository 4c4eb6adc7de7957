"""One lifecycle: a service's task runs from start() to aclose(), and cancelling waits until it has ended."""

from __future__ import annotations

import asyncio

import pytest

from expiryd.tasks import Service, cancel_and_wait, until_first_failure


class Looping(Service):
    name = "looping"

    def __init__(self) -> None:
        self.closed = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(3600)

    async def _close(self) -> None:
        self.closed = True


def test_async_with_starts_the_task_and_aclose_ends_it_then_releases_what_the_service_holds():
    async def scenario() -> tuple[bool, bool, Looping]:
        async with Looping() as service:
            await asyncio.sleep(0)
            running = not service.task.done()
            task = service.task
        return running, task.done(), service

    running, ended, service = asyncio.run(scenario())
    assert running and ended and service.closed


def test_a_service_not_started_has_no_task():
    with pytest.raises(RuntimeError, match="not started"):
        Looping().task  # noqa: B018


def test_cancel_and_wait_cancels_again_a_task_that_swallowed_the_first_cancellation():
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # as Python 3.11's wait_for can, when what it waits for completes at that moment
        await asyncio.sleep(3600)

    async def scenario() -> bool:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait([task]), 10)
        return task.done()

    assert asyncio.run(scenario())


def test_until_first_failure_ends_the_other_loops_and_raises_the_failure():
    ended = []

    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("loop")

    async def failing() -> None:
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        asyncio.run(until_first_failure(loop(), failing()))
    assert ended == ["loop"]
