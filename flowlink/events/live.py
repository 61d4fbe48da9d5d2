"""The live stream of events (Server-Sent Events): one store read per wake-up, shared."""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from flowlink import jsonsafe
from flowlink.events.service import EventFilter, event_view, read_after
from flowlink.store import notify
from flowlink.store.engine import Store

STREAM_BATCH = 200
KEEPALIVE_SECONDS = 15.0
LATE_COMMIT_WINDOW = 2.0  # PostgreSQL: seconds during which a lower seq may still commit
# How many streams write their news in one turn of the event loop. An event wakes every
# stream of its workspace at once; in turns of this many, requests (and their answers) are
# served between them instead of after the last of a thousand streams.
DELIVERIES_PER_TURN = 50
MAX_TYPES_REMEMBERED = 256  # per stream: event types whose access was checked


@dataclass(frozen=True, slots=True)
class _Item:
    """One event as the streams send it, serialised once for all of them."""

    seq: int
    type: str
    data: str  # the event's JSON

    def message(self, position: int) -> str:
        """The SSE message (``id:`` the stream position, ``event:`` its type)."""
        return f"id: {position}\nevent: {self.type}\ndata: {self.data}\n\n"


# Streams in the same place (workspace, filter, position) share one read of the store: an
# event wakes a thousand streams, and they make one query, not a thousand. A read counts
# for a stream only if no event was announced since it began (the EVENTS counter), so a
# shared result is never older than the stream's wake-up.
@dataclass(slots=True)
class _Read:
    """One read of the store under way, and the streams waiting for its rows."""

    seen: int  # the EVENTS counter when it began
    waiting: list[asyncio.Future[list[_Item]]]


_reads: dict[tuple[Any, ...], _Read] = {}


async def _shared_read(
    key: tuple[Any, ...], store: Store, read: Callable[[], list[_Item]]
) -> list[_Item]:
    """The rows of ``read``, read once for every stream that asks with the same ``key``
    meanwhile, and handed to the streams in turns (``_Turns``) when there are any.

    Each stream waits on a future of its own: a stream that is cancelled (its client left)
    cancels neither the read nor the others' wait."""
    loop = asyncio.get_running_loop()
    seen = store.notifier.counter(notify.EVENTS)
    current = _reads.get(key)
    if current is None or current.seen != seen:
        current = _reads[key] = _Read(seen, [])
        task = asyncio.ensure_future(run_in_threadpool(read))
        task.add_done_callback(functools.partial(_read_done, key, current))
    mine: asyncio.Future[list[_Item]] = loop.create_future()
    current.waiting.append(mine)
    return await mine


def _read_done(key: tuple[Any, ...], entry: _Read, task: asyncio.Future[list[_Item]]) -> None:
    if _reads.get(key) is entry:
        del _reads[key]
    error = None if task.cancelled() else task.exception()
    if task.cancelled() or error is not None:
        for waiting in entry.waiting:
            if not waiting.done():
                if error is None:
                    waiting.cancel()
                else:
                    waiting.set_exception(error)
        return
    items = task.result()
    if items:
        _delivery_turns().hand(entry.waiting, items)
    else:  # nothing to write: no turn needed
        for waiting in entry.waiting:
            if not waiting.done():
                waiting.set_result(items)


class _Turns:
    """Hands results to waiting futures, at most ``per_turn`` per turn of the event loop,
    first come first served; the streams they wake write in that turn, and requests that
    arrived meanwhile are served before the next."""

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self.queue: deque[tuple[asyncio.Future[Any], Any]] = deque()
        self.next_turn_scheduled = False

    def hand(self, futures: Iterable[asyncio.Future[Any]], result: Any) -> None:
        """Give ``result`` to each of ``futures`` in the turns to come."""
        self.queue.extend((future, result) for future in futures)
        if self.queue and not self.next_turn_scheduled:
            self.next_turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        handed = 0
        while self.queue and handed < self.per_turn:
            future, result = self.queue.popleft()
            if not future.done():  # a stream cancelled while it waited takes no room
                future.set_result(result)
                handed += 1
        self.next_turn_scheduled = bool(self.queue)
        if self.next_turn_scheduled:
            asyncio.get_running_loop().call_soon(self._next_turn)


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = weakref.WeakKeyDictionary()


def _delivery_turns() -> _Turns:
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = _Turns(DELIVERIES_PER_TURN)
    return turns


def _item(view: dict[str, Any]) -> _Item:
    data = jsonsafe.dumps(view, separators=(",", ":"), default=str)
    return _Item(view["seq"], view["type"], data)


async def stream(
    store: Store,
    workspace_id: str,
    criteria: EventFilter,
    start: int,
    *,
    gone: Callable[[], Awaitable[bool]],
    stopped: Callable[[], bool] = lambda: False,
    readable: Callable[[str], bool] = lambda _type: True,
) -> AsyncIterator[str]:
    """Server-Sent Events of a workspace's events after seq ``start``, until the client
    leaves (``gone()``, asked before each keep-alive) or the server stops (``stopped()``,
    asked at every wake-up).

    Rows are always read from the store by seq; a notification only says "look again".
    The streams woken by one notification share one read, each event is serialised once
    for all of them, and the read's rows reach them in turns (``DELIVERIES_PER_TURN``), so
    that the server answers requests between them.

    The client's buffer is this generator: it reads the next rows only once the previous ones
    were sent, so a slow client lags behind (and can resume) without holding memory or
    slowing anyone else. On PostgreSQL a transaction can commit a lower seq after a higher
    one was read; its commit announces it like any other, and the reads that follow look
    from a short window behind the cursor: such a row is delivered once, with the stream
    position as its ``id``.
    """
    late_commits = store.dialect == "postgresql"
    cursor = start  # highest seq delivered
    floor = start  # PostgreSQL: lowest seq that might still appear
    recent: dict[int, float] = {}  # seq -> when delivered, for seqs above floor
    allowed: dict[str, bool] = {}  # event type -> readable(type), asked once per type

    def read(after: int, limit: int) -> list[_Item]:
        with store.read() as session:
            rows = read_after(session, workspace_id, criteria, after, limit=limit)
            views = [event_view(e) for e in rows]
        return [_item(view) for view in views]

    last_sent = time.monotonic()
    with store.notifier.waiter({notify.EVENTS: {workspace_id}}) as waiter:
        yield "retry: 1000\n\n"
        look = True
        while True:
            if stopped():
                return
            if not look:  # nothing announced: sleep until a keep-alive is due
                idle = KEEPALIVE_SECONDS - (time.monotonic() - last_sent)
                look = bool(await waiter.wait(max(idle, 0.0)))
                if not look:  # the keep-alive is due (the timer may fire a millisecond early)
                    # A client that went away is noticed when the keep-alive is due.
                    if await gone():
                        return
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            after, limit = (floor if late_commits else cursor), STREAM_BATCH + len(recent)
            items = await _shared_read(
                (store, workspace_id, criteria, after, limit),
                store,
                functools.partial(read, after, limit),
            )
            fresh = [item for item in items if item.seq not in recent]
            now = time.monotonic()
            for item in fresh:
                cursor = max(cursor, item.seq)
                if late_commits:
                    recent[item.seq] = now
                permitted = allowed.get(item.type)
                if permitted is None:
                    if len(allowed) >= MAX_TYPES_REMEMBERED:
                        allowed.clear()
                    permitted = allowed[item.type] = readable(item.type)
                if permitted:
                    yield item.message(cursor)
                last_sent = now
            if late_commits:
                settled = [s for s, at in recent.items() if now - at > LATE_COMMIT_WINDOW]
                if settled:
                    floor = max(floor, *settled)
                    recent = {s: at for s, at in recent.items() if s > floor}
                elif not recent:
                    floor = cursor
            # A full batch: more rows are waiting. Otherwise the next notification (a late
            # commit's too) says when to look again.
            look = len(fresh) >= STREAM_BATCH
