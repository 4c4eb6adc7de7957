"""Route delivery: attempts, backoff, retry-later, dead-letters, shedding and leadership, in process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from expiryd.completion import Completion, Pending
from expiryd.config import BatchConfig, RetryConfig, RouteConfig
from expiryd.deadletter import DeadLetters
from expiryd.delivery import RouteDelivery, backoff, handler_error
from expiryd.events import HEXPIRED, Event, Expiration
from expiryd.handlers import PermanentFailure, RetryLater
from expiryd.metrics import Metrics
from expiryd.payload import Oversized
from expiryd.retries import KeyQueue, Parked
from expiryd.routing import Route

FAST_RETRY = RetryConfig(max_attempts=3, backoff=0.001, max_backoff=0.001)


class Recorder:
    """A handler that fails with the given errors first, then records what it gets."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[tuple[float, list[Event]]] = []

    async def handle(self, events: list[Event]) -> None:
        self.calls.append((time.monotonic(), events))
        if self.failures:
            raise self.failures.pop(0)

    async def aclose(self) -> None:
        pass


ENTRY_BYTES = 100  # what the fake stream says each entry takes


class StreamClient:
    """A Redis client whose pipelines append XADDs to ``entries``, or fail when ``down``."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.entries: list[dict[str, Any]] = []

    def pipeline(self, *, transaction: bool) -> StreamClient._Pipeline:
        return StreamClient._Pipeline(self)

    async def xtrim(self, stream: str, *, maxlen: int, approximate: bool) -> int:
        trimmed = max(0, len(self.entries) - maxlen)
        del self.entries[:trimmed]
        return trimmed

    class _Pipeline:
        def __init__(self, client: StreamClient) -> None:
            self._client = client
            self._queued: list[dict[str, Any]] = []
            self._reads: list[str] = []

        def xadd(self, stream: str, fields: dict[str, Any], **options: Any) -> None:
            self._queued.append(fields)

        def xlen(self, stream: str) -> None:
            self._reads.append("xlen")

        def memory_usage(self, stream: str, *, samples: int) -> None:
            self._reads.append("memory")

        async def execute(self) -> list[int]:
            if self._client.down:
                raise RedisConnectionError("stream unreachable")
            self._client.entries += self._queued
            count = len(self._client.entries)
            return [count if read == "xlen" else ENTRY_BYTES * count for read in self._reads]


class Term:
    def __init__(self, term: int | None = 1) -> None:
        self.current = term

    def term(self) -> int | None:
        return self.current


class Retries:
    """A route's retry set in memory, as RetrySet keeps it in Redis: a queue per key; ``down`` fails every call."""

    def __init__(self, *, max_entries: int = 1000, down: bool = False) -> None:
        self.queues: dict[bytes, list[Parked]] = {}
        self.due: dict[bytes, float] = {}
        self.max_entries = max_entries
        self.down = down
        self.finished: list[str] = []

    @property
    def entries(self) -> list[Parked]:
        return [entry for queue in self.queues.values() for entry in queue]

    def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("retry set unreachable")

    async def park(self, entries: list[Parked]) -> int:
        self._check()
        parked = 0
        for entry in entries:
            if len(self.entries) >= self.max_entries:
                break
            key = entry.expiration.key
            if key not in self.queues:
                self.due[key] = entry.due_at
            self.queues.setdefault(key, []).append(entry)
            parked += 1
        return parked

    async def held(self, keys: list[bytes]) -> set[bytes]:
        self._check()
        return {key for key in keys if key in self.queues}

    async def take_due(
        self, *, now: float, limit: int, claim_for: float, due_by: float | None = None
    ) -> list[KeyQueue]:
        self._check()
        taken = []
        due_by = now if due_by is None else due_by
        for key in sorted((k for k, at in self.due.items() if at <= due_by), key=self.due.__getitem__):
            taken.append(KeyQueue(key, list(self.queues[key])))
            self.due[key] = now + claim_for
        return taken

    async def done(self, queue: KeyQueue, *, now: float) -> None:
        await self.failed(queue, spent=queue.entries, again=[], due_at=now)

    async def failed(self, queue: KeyQueue, *, spent: list[Parked], again: list[Parked], due_at: float) -> None:
        self._check()
        rest = self.queues[queue.key][len(spent) :]
        rest[: len(again)] = again
        self.finished += [entry.id for entry in spent]
        if rest:
            self.queues[queue.key], self.due[queue.key] = rest, due_at
        else:
            del self.queues[queue.key], self.due[queue.key]

    async def size(self) -> int:
        return len(self.entries)

    async def oldest_failure(self) -> float | None:
        return min((e.first_failed_at for e in self.entries), default=None)


def make_route(
    handler: Recorder,
    *,
    retry: RetryConfig = FAST_RETRY,
    concurrency: int = 1,
    queue_size: int = 100,
    retries: Retries | None = None,
) -> Route:
    return Route(
        config=RouteConfig(
            match="*",
            name="orders",
            concurrency=concurrency,
            queue_size=queue_size,
            batch=BatchConfig(size=10),
            retry=retry,
        ),
        handler=handler,
        retries=retries,  # type: ignore[arg-type]
    )


class Setup:
    def __init__(
        self,
        handler: Recorder,
        *,
        retry: RetryConfig = FAST_RETRY,
        stream_down: bool = False,
        upstream_blocked: float = 0.0,
        queue_size: int = 100,
        retries: Retries | None = None,
        max_dead_bytes: int = 1 << 20,
    ) -> None:
        self.retries = retries
        self.metrics = Metrics()
        self.leadership = Term(1)
        self.completion = Completion(term=1, marks={})
        self.stream = StreamClient(down=stream_down)
        self.delivery = RouteDelivery(
            route=make_route(handler, retry=retry, queue_size=queue_size, retries=retries),
            term=1,
            replica="r1",
            leadership=self.leadership,
            completion=self.completion,
            dead_letters=DeadLetters(
                client=self.stream, stream="dead", maxlen=100, max_bytes=max_dead_bytes, metrics=self.metrics
            ),
            metrics=self.metrics,
            upstream_blocked=lambda: upstream_blocked,
            shed_after=1.0,
            grace=5.0,
            now=time.time,
        )

    async def submit(self, *keys: bytes) -> None:
        await self.delivery.submit([self.completion.add(Expiration(key, "n:1", 1.0)) for key in keys])

    def deliver(self, *keys: bytes) -> Setup:
        """Start the delivery, submit ``keys``, and close it once they are done."""

        async def scenario() -> None:
            self.delivery.start()
            await self.submit(*keys)
            await self.delivery.aclose()

        asyncio.run(scenario())
        return self

    def deliver_until(self, done: Callable[[], bool], *keys: bytes) -> Setup:
        """Start the delivery, submit ``keys``, and close it once ``done()``."""

        async def scenario() -> None:
            self.delivery.start()
            await self.submit(*keys)
            while not done():
                await asyncio.sleep(0.001)
            await self.delivery.aclose()

        asyncio.run(asyncio.wait_for(scenario(), 10))
        return self

    def processed(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "expiryd_events_processed_total", {"route": "orders", "outcome": outcome}
        )
        return value or 0.0


def test_backoff_is_full_jitter_over_a_doubling_delay_capped_at_max_backoff():
    retry = RetryConfig(backoff=1.0, max_backoff=5.0)
    error = RuntimeError("x")
    assert [backoff(attempt, retry=retry, error=error, jitter=1.0) for attempt in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert backoff(3, retry=retry, error=error, jitter=0.0) == 0.0
    assert backoff(2, retry=retry, error=error, jitter=0.5) == 1.0


def test_retry_later_waits_at_least_its_after_within_max_backoff():
    retry = RetryConfig(backoff=0.1, max_backoff=5.0)
    assert backoff(1, retry=retry, error=RetryLater("429", after=3.0), jitter=0.0) == 3.0
    assert backoff(1, retry=retry, error=RetryLater("429", after=60.0), jitter=0.0) == 5.0
    assert backoff(1, retry=retry, error=RetryLater("429"), jitter=1.0) == 0.1


def test_a_batch_is_handed_to_the_handler_with_the_term_and_replica():
    handler = Recorder()
    setup = Setup(handler).deliver(b"a", b"b")
    [(_, events)] = handler.calls
    assert [(e.key, e.term, e.replica) for e in events] == [(b"a", 1, "r1"), (b"b", 1, "r1")]
    assert setup.processed("ok") == 2 and setup.completion.unfinished() == 0


def test_a_failing_handler_is_retried_then_dead_lettered_with_the_attempt_count():
    handler = Recorder(*(RuntimeError("boom") for _ in range(3)))
    setup = Setup(handler).deliver(b"a")
    assert len(handler.calls) == 3
    [entry] = setup.stream.entries
    assert entry["key"] == b"a" and entry["attempts"] == "3" and "boom" in entry["error"]
    assert setup.processed("retried") == 2 and setup.processed("dead_lettered") == 1
    assert setup.completion.unfinished() == 0


def test_a_permanent_failure_is_dead_lettered_without_a_retry():
    handler = Recorder(PermanentFailure("HTTP 403"))
    setup = Setup(handler).deliver(b"a")
    assert len(handler.calls) == 1 and setup.stream.entries[0]["attempts"] == "1"


def test_retry_later_delays_the_next_attempt_by_at_least_after():
    handler = Recorder(RetryLater("HTTP 429", after=0.2))
    Setup(handler, retry=RetryConfig(max_attempts=3, backoff=0.001, max_backoff=10.0)).deliver(b"a")
    (first, _), (second, _) = handler.calls
    assert second - first >= 0.2


def test_events_are_logged_and_counted_dropped_when_the_dead_letter_stream_cannot_be_written(caplog):
    setup = Setup(Recorder(PermanentFailure("HTTP 400")), stream_down=True).deliver(b"lost-but-logged")
    assert setup.processed("dropped") == 1 and setup.completion.unfinished() == 0
    assert any("lost-but-logged" in str(getattr(r, "event", "")) for r in caplog.records)


def test_a_step_down_stops_the_retries_and_leaves_the_events_unfinished():
    async def scenario() -> tuple[Recorder, Setup]:
        handler = Recorder(*(RuntimeError("boom") for _ in range(100)))
        setup = Setup(handler, retry=RetryConfig(max_attempts=100, backoff=0.01, max_backoff=0.01))
        setup.delivery.start()
        await setup.submit(b"a")
        while not handler.calls:
            await asyncio.sleep(0.001)
        setup.leadership.current = None
        await setup.delivery.aclose()
        return handler, setup

    handler, setup = asyncio.run(scenario())
    assert len(handler.calls) < 100
    assert setup.completion.unfinished() == 1 and setup.stream.entries == []


def test_abandoned_events_stay_unfinished_and_reach_no_handler():
    async def scenario() -> tuple[Recorder, Setup]:
        gate = asyncio.Event()

        class Slow(Recorder):
            async def handle(self, events: list[Event]) -> None:
                await gate.wait()
                await super().handle(events)

        handler = Slow()
        setup = Setup(handler)
        setup.delivery = RouteDelivery(
            route=make_route(handler, concurrency=1),
            term=1,
            replica="r1",
            leadership=setup.leadership,
            completion=setup.completion,
            dead_letters=DeadLetters(
                client=setup.stream, stream="dead", maxlen=9, max_bytes=1 << 20, metrics=setup.metrics
            ),
            metrics=setup.metrics,
            upstream_blocked=lambda: 0.0,
            shed_after=1.0,
            grace=5.0,
            now=time.time,
        )
        setup.delivery.start()
        await setup.submit(b"in-flight")
        await asyncio.sleep(0.01)
        await setup.submit(b"queued")
        setup.leadership.current = None
        setup.delivery.abandon()
        gate.set()
        await setup.delivery.aclose()
        return handler, setup

    handler, setup = asyncio.run(scenario())
    # The call in flight had its grace period and finished; the queued event is left to the next leader.
    assert [e.key for _, events in handler.calls for e in events] == [b"in-flight"]
    assert setup.completion.unfinished() == 1


def test_shed_events_are_counted_dropped_and_finished():
    async def scenario() -> tuple[Setup, list[Pending]]:
        setup = Setup(Recorder(), upstream_blocked=5.0, queue_size=1)
        pendings = [setup.completion.add(Expiration(key, "n:1", 1.0)) for key in (b"fits", b"shed")]
        await setup.delivery.submit(pendings)  # not started: nothing takes from the lane
        return setup, pendings

    setup, (fits, shed) = asyncio.run(scenario())
    assert setup.processed("dropped") == 1
    assert shed.done and not fits.done


def test_a_step_down_during_a_slow_payload_fetch_leaves_the_batch_to_the_next_leader():
    class SlowPayloads:
        """Companion keys on a node that answers only once the leader has stepped down."""

        def __init__(self, leadership: Term) -> None:
            self.leadership = leadership

        async def fetch(self, keys: list[bytes]) -> list[bytes | None]:
            self.leadership.current = None
            return [b"payload" for _ in keys]

        async def delete(self, keys: list[bytes]) -> None:
            raise AssertionError("nothing was handled, so nothing is deleted")

    async def scenario() -> tuple[Recorder, Setup]:
        handler = Recorder()
        setup = Setup(handler)
        route = make_route(handler)
        setup.delivery.route = Route(config=route.config, handler=handler, payload=SlowPayloads(setup.leadership))
        setup.delivery.start()
        await setup.submit(b"a")
        await setup.delivery.aclose()
        return handler, setup

    handler, setup = asyncio.run(scenario())
    # Called now, the batch would reach the receiver under the old term after the next leader's first.
    assert handler.calls == []
    assert setup.completion.unfinished() == 1


class Payloads:
    """Companion keys: every fetch finds one; deletions are recorded."""

    def __init__(self) -> None:
        self.deleted: list[bytes] = []

    async def fetch(self, keys: list[bytes], *, whole: bool = False) -> list[bytes | None | Oversized]:
        return [b"payload" for _ in keys]

    async def delete(self, keys: list[bytes]) -> None:
        self.deleted += keys


class BoundedPayloads(Payloads):
    """Companions as PayloadKeys bounds them: two per call at most; keys named ``big`` are oversized."""

    max_bytes = 1000

    def __init__(self) -> None:
        super().__init__()
        self.set_aside_keys: list[bytes] = []

    async def fetch(self, keys: list[bytes], *, whole: bool = False) -> list[bytes | None | Oversized]:
        found: list[bytes | None | Oversized] = []
        for key in keys:
            if b"big" in key:
                found.append(Oversized(5000))
            elif sum(1 for f in found if not isinstance(f, Oversized)) < 2 or whole:
                found.append(b"payload of " + key)
            else:
                break
        return found

    async def set_aside(self, key: bytes) -> bytes | None:
        self.set_aside_keys.append(key)
        return b"expiryd:oversized:{" + key + b"}"


def bounded_payload_run(keys: list[bytes]) -> tuple[Recorder, BoundedPayloads, Setup]:
    async def scenario() -> tuple[Recorder, BoundedPayloads, Setup]:
        handler, payloads = Recorder(), BoundedPayloads()
        setup = Setup(handler)
        setup.delivery.route = Route(config=make_route(handler).config, handler=handler, payload=payloads)
        setup.delivery.start()
        await setup.delivery.submit([setup.completion.add(Expiration(key, "n:1", 1.0)) for key in keys])
        await setup.delivery.aclose()
        return handler, payloads, setup

    return asyncio.run(scenario())


def test_a_batch_whose_payloads_pass_the_bound_is_handed_over_in_parts_in_order():
    handler, payloads, setup = bounded_payload_run([b"k%d" % n for n in range(5)])
    assert [[event.key for event in events] for _, events in handler.calls] == [
        [b"k0", b"k1"],
        [b"k2", b"k3"],
        [b"k4"],
    ]
    assert payloads.deleted == [b"k0", b"k1", b"k2", b"k3", b"k4"]
    assert setup.completion.unfinished() == 0


def test_an_oversized_payload_is_dead_lettered_by_reference_and_its_companion_kept():
    handler, payloads, setup = bounded_payload_run([b"k0", b"big", b"k1"])
    assert [event.key for _, events in handler.calls for event in events] == [b"k0", b"k1"]
    assert payloads.set_aside_keys == [b"big"]
    assert b"big" not in payloads.deleted
    (entry,) = setup.stream.entries
    assert entry["key"] == b"big" and "payload" not in entry
    assert (entry["payload_ref"], entry["payload_bytes"]) == (b"expiryd:oversized:{big}", "5000")
    assert "payload_max_bytes" in entry["error"]
    assert setup.completion.unfinished() == 0


def test_a_hash_field_expiration_keeps_the_companion_and_a_key_expiration_deletes_it():
    async def scenario() -> tuple[Recorder, Payloads]:
        handler, payloads = Recorder(), Payloads()
        setup = Setup(handler)
        setup.delivery.route = Route(config=make_route(handler).config, handler=handler, payload=payloads)
        setup.delivery.start()
        await setup.delivery.submit(
            [
                setup.completion.add(Expiration(b"cart:{7}", "n:1", 1.0, HEXPIRED)),  # the hash lives on
                setup.completion.add(Expiration(b"order:{8}", "n:1", 1.0)),
            ]
        )
        await setup.delivery.aclose()
        return handler, payloads

    handler, payloads = asyncio.run(scenario())
    assert [event.payload for _, events in handler.calls for event in events] == [b"payload", b"payload"]
    assert payloads.deleted == [b"order:{8}"]


# Durable retries: two attempts in memory, then the retry set, up to four attempts in all.
DURABLE = RetryConfig(max_attempts=4, backoff=0.001, max_backoff=0.001, in_memory=2)


def test_after_its_in_memory_attempts_a_failing_batch_waits_in_the_retry_set_and_is_finished_for_the_marks():
    handler = Recorder(*(RuntimeError("down") for _ in range(2)))
    retries = Retries(down=False)
    setup = Setup(handler, retry=DURABLE, retries=retries)

    async def scenario() -> None:
        setup.delivery.start()
        await setup.submit(b"a", b"b")
        while setup.processed("parked") < 2:
            await asyncio.sleep(0.001)
        setup.leadership.current = None  # stepped down: the retry worker takes nothing more
        await setup.delivery.aclose()

    asyncio.run(scenario())
    assert len(handler.calls) == 2
    assert sorted(entry.expiration.key for entry in retries.entries) == [b"a", b"b"]
    assert {(entry.attempts, entry.error) for entry in retries.entries} == {(2, "RuntimeError: down")}
    assert setup.completion.unfinished() == 0


def test_a_parked_event_is_attempted_again_under_the_term_and_leaves_the_retry_set_once_handled():
    handler = Recorder(*(RuntimeError("down") for _ in range(3)))
    retries = Retries()
    setup = Setup(handler, retry=DURABLE, retries=retries).deliver_until(lambda: len(retries.finished) == 1, b"a")
    assert [(event.key, event.term) for _, events in handler.calls for event in events] == [(b"a", 1)] * 4
    assert retries.entries == [] and setup.stream.entries == []
    assert setup.processed("ok") == 1 and setup.processed("parked") == 1


def test_a_parked_event_that_spends_its_attempts_is_dead_lettered_and_leaves_the_retry_set():
    handler = Recorder(*(RuntimeError("down") for _ in range(4)))
    retries = Retries()
    setup = Setup(handler, retry=DURABLE, retries=retries).deliver_until(lambda: len(retries.finished) == 1, b"a")
    assert len(handler.calls) == 4
    [entry] = setup.stream.entries
    assert entry["key"] == b"a" and entry["attempts"] == "4"
    assert retries.entries == [] and setup.processed("dead_lettered") == 1


def test_a_parked_event_that_spends_its_attempts_is_dead_lettered_with_its_payload_and_its_companion_goes():
    handler = Recorder(*(RuntimeError("down") for _ in range(4)))
    retries, payloads = Retries(), Payloads()
    setup = Setup(handler, retry=DURABLE, retries=retries)
    route = setup.delivery.route
    setup.delivery.route = Route(config=route.config, handler=handler, payload=payloads, retries=retries)  # type: ignore[arg-type]
    setup.deliver_until(lambda: len(retries.finished) == 1, b"order:{1}")
    [entry] = setup.stream.entries
    assert (entry["key"], entry["payload"]) == (b"order:{1}", b"payload")
    assert payloads.deleted == [b"order:{1}"]  # else the sweep would find it, and deliver it again


def test_when_the_retry_set_cannot_be_written_the_lane_goes_on_retrying_in_memory():
    handler = Recorder(*(RuntimeError("down") for _ in range(3)))
    retries = Retries(down=True)
    setup = Setup(handler, retry=DURABLE, retries=retries).deliver(b"a")
    assert len(handler.calls) == 4 and setup.processed("ok") == 1 and setup.processed("parked") == 0


def test_what_does_not_fit_in_a_full_retry_set_is_dead_lettered():
    handler = Recorder(RuntimeError("down"), RuntimeError("down"))
    retries = Retries(max_entries=1)
    setup = Setup(handler, retry=DURABLE, retries=retries)

    async def scenario() -> None:
        setup.delivery.start()
        await setup.submit(b"a", b"b")
        while setup.processed("dead_lettered") < 1:
            await asyncio.sleep(0.001)
        setup.leadership.current = None
        await setup.delivery.aclose()

    asyncio.run(scenario())
    assert [entry.expiration.key for entry in retries.entries] == [b"a"]
    assert [entry["key"] for entry in setup.stream.entries] == [b"b"]


def test_a_later_event_of_a_key_that_waits_in_the_retry_set_waits_behind_it_and_is_delivered_after_it():
    handler = Recorder(RuntimeError("down"), RuntimeError("down"))
    retries = Retries()
    setup = Setup(handler, retry=DURABLE, retries=retries)

    async def scenario() -> None:
        setup.delivery.start()
        await setup.submit(b"a")  # fails twice in memory, then waits in the retry set
        while setup.processed("parked") < 1:
            await asyncio.sleep(0.001)
        await setup.delivery.submit([setup.completion.add(Expiration(b"a", "n:1", 2.0))])  # a later event of "a"
        while len(retries.finished) < 2:
            await asyncio.sleep(0.001)
        await setup.delivery.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    delivered = [event.received_at for _, events in handler.calls[2:] for event in events]
    assert delivered == [1.0, 2.0]  # the first event of "a" before the second, in one call
    assert setup.processed("parked") == 2 and setup.completion.unfinished() == 0


def test_once_the_handler_answers_again_waiting_queues_are_sent_before_their_backoff_runs_out():
    # Parked with a backoff of an hour; a fresh event of another key succeeds: the receiver is back.
    handler = Recorder(RuntimeError("down"))
    retries = Retries()
    slow = RetryConfig(max_attempts=4, backoff=3600.0, max_backoff=3600.0, in_memory=1)
    setup = Setup(handler, retry=slow, retries=retries)

    async def scenario() -> None:
        setup.delivery.start()
        await setup.submit(b"a")
        while setup.processed("parked") < 1:
            await asyncio.sleep(0.001)
        await setup.submit(b"b")
        while retries.entries:
            await asyncio.sleep(0.001)
        await setup.delivery.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert [event.key for _, events in handler.calls[1:] for event in events] == [b"b", b"a"]


def test_a_handlers_own_failure_is_told_in_its_words_and_any_other_with_its_class():
    assert handler_error(RetryLater("HTTP 503: busy")) == "HTTP 503: busy"
    assert handler_error(PermanentFailure("HTTP 400")) == "HTTP 400"
    assert handler_error(KeyError("order")) == "KeyError: 'order'"
