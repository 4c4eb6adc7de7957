"""A ``python`` handler for the benchmarks: notes when each event reached the handler, inside expiryd.

    routes: [{match: "lat:*", python: "bench.recorder:record"}]
    EXPIRYD_BENCH_TIMES=/tmp/times.tsv python -m expiryd ...

Each event adds the line ``key<TAB>handler time<TAB>received_at`` to the file
(wall-clock seconds). The bare subscriber notes its arrival times the same way,
in its own process, so neither side pays for a pipe or for this benchmark's
reading between Redis and the timestamp.
"""

from __future__ import annotations

import functools
import os
import time

from expiryd import Event


async def record(events: list[Event]) -> None:
    now = time.time()
    os.write(_output(), b"".join(b"%s\t%.6f\t%.6f\n" % (event.key, now, event.received_at) for event in events))


@functools.cache
def _output() -> int:
    return os.open(os.environ["EXPIRYD_BENCH_TIMES"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
