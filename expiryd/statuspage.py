"""The status page at ``/``: the facts of ``expiryd status`` and the last dead letters, as one HTML page.

Rendered on the server, refreshed by the browser every few seconds, with nothing fetched from
elsewhere and no script. It writes nothing: a redrive stays with ``expiryd dlq``. Every value that
comes from Redis (keys, errors, node names) is escaped, so a hostile key shows as text::

    page = StatusPage(config=config, read=read_status, dead_letters=data_client)
    reply = await page.reply()       # read at most once per CACHE_FOR seconds, however often asked
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Config
from .connections import REDIS_FAILURES
from .dlq import DeadLetter
from .events import printable
from .httpserver import Reply
from .status import Status, attention

__all__ = ["StatusPage", "render_page"]

# A page asked for again within this many seconds is the one already rendered: the facts are read
# from every node, and a page left open refreshes itself.
CACHE_FOR = 3.0
REFRESH_EVERY = 5
# The dead letters the page shows, newest first.
LAST_DEAD_LETTERS = 10

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em 0.25em 0; text-align: left; }
.bad { color: #b00020; font-weight: 600; } .ok { color: #1b5e20; } code { font-size: 0.95em; }
"""


class StatusPage:
    def __init__(
        self,
        *,
        config: Config,
        read: Callable[[Config], Awaitable[Status]],
        dead_letters: Any,
        replica: str,
    ) -> None:
        self._config = config
        self._read = read
        self._client = dead_letters
        self._replica = replica
        self._rendered: tuple[float, Reply] | None = None
        self._lock = asyncio.Lock()

    async def reply(self) -> Reply:
        async with self._lock:  # one read at a time, however many browsers ask
            if self._rendered is not None and time.monotonic() - self._rendered[0] < CACHE_FOR:
                return self._rendered[1]
            status = await self._read(self._config)
            try:
                page = await self._client.xrevrange(self._config.dead_letter.stream, count=LAST_DEAD_LETTERS)
                letters = [DeadLetter.of(id, fields) for id, fields in page]
            except REDIS_FAILURES:
                letters = []
            body = render_page(status, letters, replica=self._replica).encode("utf-8")
            reply = Reply(200, body, "text/html; charset=utf-8")
            self._rendered = (time.monotonic(), reply)
            return reply


def render_page(status: Status, letters: list[DeadLetter], *, replica: str) -> str:
    e = html.escape
    leader = status.leader
    needs = attention(status)
    rows = []
    for view in status.replicas:
        role = f"leader, term {view.term}" if view.term is not None else "follower"
        standing = (
            "eligible"
            if view.eligible
            else f"deferring for {view.deferring_for:.0f} s"
            if view.deferring_for is not None
            else "not eligible yet"
        )
        reach = min((age for age in view.history.values() if age is not None), default=None)
        rows.append(
            f"<tr><td>{e(view.id)}</td><td>{e(role)}</td><td>{e(standing)}</td>"
            f"<td>{'-' if reach is None else f'{reach:.0f} s'}</td>"
            f"<td>{'-' if view.scheduled is None else view.scheduled}</td><td>{view.report_age:.1f} s</td></tr>"
        )
    primaries = [
        f"<tr><td><code>{e(p.address)}</code></td><td>{p.slots}</td>"
        f'<td class="{"ok" if p.heard_by else "bad"}">{e(", ".join(p.heard_by) or "nobody")}</td>'
        f'<td class="{"ok" if p.notifications_ok else "bad"}">{e(p.notifications)}</td>'
        f"<td>{'-' if p.mark_age is None else f'{p.mark_age:.0f} s'}</td></tr>"
        for p in status.primaries
    ]
    dead = [
        f"<tr><td><code>{e(letter.id)}</code></td><td>{e(letter.route)}</td>"
        f"<td><code>{e(printable(letter.key))}</code></td><td>{letter.attempts}</td><td>{e(letter.error)}</td></tr>"
        for letter in letters
    ]
    count = "unknown" if status.dead_letters is None else str(status.dead_letters)
    headline = (
        '<span class="bad">no leader</span>'
        if leader is None
        else f"leader <strong>{e(leader.id)}</strong>, term <strong>{leader.term}</strong>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_EVERY}">
<title>expiryd status</title><style>{_STYLE}</style></head>
<body>
<h1>expiryd: {headline}</h1>
<p>Seen from replica {e(replica)} at {e(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.at)))};
this page refreshes every {REFRESH_EVERY} s. Redrive dead letters with <code>expiryd dlq</code>.</p>
<h2>Attention</h2>
{"<p class='ok'>nothing needs attention</p>" if not needs else "<ul>" + "".join(f"<li class='bad'>{e(line)}</li>" for line in needs) + "</ul>"}
<h2>Replicas</h2>
<table><tr><th>id</th><th>role</th><th>may lead</th><th>history reaches back</th><th>scheduled keys</th><th>report age</th></tr>
{"".join(rows)}</table>
<h2>Primaries</h2>
<table><tr><th>primary</th><th>slots</th><th>heard by</th><th>notifications</th><th>progress mark age</th></tr>
{"".join(primaries)}</table>
<h2>Dead letters: {e(count)} in <code>{e(status.dead_letter_stream)}</code></h2>
<table><tr><th>id</th><th>route</th><th>key</th><th>attempts</th><th>error</th></tr>
{"".join(dead)}</table>
</body></html>
"""
