"""The live stream of events (Server-Sent Events): one store read per wake-up, shared."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from flowlink import jsonsafe
from flowlink.events.service import EventFilter, event_view, read_after
from flowlink.store import notify
from flowlink.store.engine import Store

STREAM_BATCH = 200
KEEPALIVE_SECONDS = 15.0
LATE_COMMIT_WINDOW = 2.0  # PostgreSQL: seconds during which a lower seq may still commit

# Streams in the same place (workspace, filter, position) share one read of the store: an
# event wakes a thousand streams, and they make one query, not a thousand. A read counts
# for a stream only if no event was announced since it began (the EVENTS counter), so a
# shared result is never older than the stream's wake-up.
_reads: dict[tuple[Any, ...], tuple[int, asyncio.Future[Any]]] = {}


async def _shared_read(
    key: tuple[Any, ...], store: Store, read: Callable[[], list[tuple[int, dict[str, Any]]]]
) -> list[tuple[int, dict[str, Any]]]:
    seen = store.notifier.counter(notify.EVENTS)
    current = _reads.get(key)
    if current is None or current[0] != seen:
        future: asyncio.Future[Any] = asyncio.ensure_future(run_in_threadpool(read))
        current = (seen, future)
        _reads[key] = current

        def forget(_done: asyncio.Future[Any], entry: Any = current) -> None:
            if _reads.get(key) is entry:
                del _reads[key]

        future.add_done_callback(forget)
    result: list[tuple[int, dict[str, Any]]] = await asyncio.shield(current[1])
    return result


def sse(view: dict[str, Any], position: int) -> str:
    """One event as an SSE message (``id:`` the stream position, ``event:`` its type)."""
    data = jsonsafe.dumps(view, separators=(",", ":"), default=str)
    return f"id: {position}\nevent: {view['type']}\ndata: {data}\n\n"


async def stream(
    store: Store,
    workspace_id: str,
    criteria: EventFilter,
    start: int,
    *,
    gone: Callable[[], Awaitable[bool]],
    readable: Callable[[str], bool] = lambda _type: True,
) -> AsyncIterator[str]:
    """Server-Sent Events of a workspace's events after seq ``start``, until ``gone()``
    (the client left or the server stops).

    Rows are always read from the store by seq; a notification only says "look again".

    The client's buffer is this generator: it reads the next rows only once the previous ones
    were sent, so a slow client lags behind (and can resume) without holding memory or
    slowing anyone else. On PostgreSQL a transaction can commit a lower seq after a higher
    one was read; rows inside a short window behind the cursor are re-checked and delivered
    once, with the stream position as their ``id``.
    """
    late_commits = store.dialect == "postgresql"
    cursor = start  # highest seq delivered
    floor = start  # PostgreSQL: lowest seq that might still appear
    recent: dict[int, float] = {}  # seq -> when delivered, for seqs above floor

    def read(after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        with store.read() as session:
            rows = read_after(session, workspace_id, criteria, after, limit=limit)
            return [(e.seq, event_view(e)) for e in rows]

    last_sent = time.monotonic()
    with store.notifier.waiter({notify.EVENTS: {workspace_id}}) as waiter:
        yield "retry: 1000\n\n"
        look = True
        while True:
            if not look:  # nothing announced: sleep until a keep-alive is due
                if await gone():
                    return
                # A client that went away is noticed when the keep-alive cannot be sent.
                idle = KEEPALIVE_SECONDS - (time.monotonic() - last_sent)
                look = bool(await waiter.wait(max(idle, 0.0)))
                if not look and time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            after, limit = (floor if late_commits else cursor), STREAM_BATCH + len(recent)
            rows = await _shared_read(
                (store, workspace_id, criteria, after, limit),
                store,
                functools.partial(read, after, limit),
            )
            fresh = [(seq, view) for seq, view in rows if seq not in recent]
            now = time.monotonic()
            for seq, view in fresh:
                cursor = max(cursor, seq)
                if late_commits:
                    recent[seq] = now
                if readable(view["type"]):
                    yield sse(view, cursor)
                last_sent = now
            if late_commits:
                settled = [s for s, at in recent.items() if now - at > LATE_COMMIT_WINDOW]
                if settled:
                    floor = max(floor, *settled)
                    recent = {s: at for s, at in recent.items() if s > floor}
                elif not recent:
                    floor = cursor
            if len(fresh) >= STREAM_BATCH:
                continue
            look = bool(recent)
            if recent:  # rows delivered lately may still be joined by late commits
                if await gone():
                    return
                await waiter.wait(0.5)
