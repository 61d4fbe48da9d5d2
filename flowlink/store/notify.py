"""Wake-ups between components: in-process always, across processes via PostgreSQL NOTIFY.

A change is announced inside the transaction that makes it (``announce``). After the commit the
announcement fires in this process at once; on PostgreSQL ``pg_notify`` delivers it to every other
process that listens, also only once the transaction commits. Listeners must treat a notification
as a hint to look at the store, never as the data itself, so a duplicate or a missed one is harmless
(workers also poll as a fallback).

Threads wait with ``Notifier.wait``; code on an event loop waits with an ``AsyncWaiter``
(``Notifier.waiter``), which holds no thread: a notification that matches it sets an
``asyncio.Event`` on its loop, once per loop and notification however many waiters match.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

QUEUED = "flowlink_queued"
ENDED = "flowlink_ended"
CANCEL = "flowlink_cancel"
EVENTS = "flowlink_events"
LINK = "flowlink_link"  # something for a link to send (payload: sync config id)
LOGS = "flowlink_logs"  # log lines were appended (payload: workspace id)
CHANNELS = (QUEUED, ENDED, CANCEL, EVENTS, LINK, LOGS)
_PAYLOAD_UNUSED = frozenset({QUEUED})  # listeners look at the store instead
#: ENDED carries the id of the execution that ended, so that a wait for one execution is
#: woken by its own end only; a transaction that ends more than this many sends one empty
#: payload instead ("anything may have ended", which wakes every waiter of the channel).
MAX_ENDED_PAYLOADS = 8

Callback = Callable[[str], None]
# What wakes an AsyncWaiter: channel -> the payloads that concern it (None: any payload).
Interests = Mapping[str, Collection[str] | None]
_PENDING_KEY = "flowlink_announcements"


class AsyncWaiter:
    """Lets a coroutine wait for notifications without holding a thread.

    Made by ``Notifier.waiter`` before the waiter first looks at the store, so a change that
    commits between the look and the wait is not missed: ``wait`` then returns at once.
    Its interests map a channel to the payloads that concern it (``None``: any payload); an
    empty payload ("anything may have changed") always wakes every waiter of the channel.
    """

    def __init__(self, notifier: Notifier, loop: asyncio.AbstractEventLoop) -> None:
        self.notifier = notifier
        self.loop = loop
        self.interests: dict[str, frozenset[str] | None] = {}
        self._woken_by: set[str] = set()
        self.woken_at = 0.0  # ``time.monotonic()`` of the last notification that concerned it
        # Only while it waits: a thousand held polls keep no Event (and its deque) each.
        self._waiting: asyncio.Future[None] | None = None

    def wake(self, channel: str) -> None:
        """Wake the waiter (called on its loop)."""
        self.woken_at = time.monotonic()
        if channel in self._woken_by:
            return  # woken by this channel already, and not yet looked
        self._woken_by.add(channel)
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    def set_interests(self, interests: Interests) -> None:
        """Change what wakes this waiter (a notification already received stays)."""
        self.notifier._register(self, interests)

    async def wait(self, timeout: float) -> set[str]:
        """Wait until a notification of interest came (since the last ``wait``) or the timeout.

        Returns the channels that woke it; empty on the timeout.
        """
        if not self._woken_by and timeout > 0:
            self._waiting = self.loop.create_future()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                        await self._waiting
            finally:
                self._waiting = None
        woken, self._woken_by = self._woken_by, set()
        return woken


class Notifier:
    """Publish/subscribe on a few named channels, with a per-channel wake-up condition."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._conditions = {name: threading.Condition() for name in CHANNELS}
        self._counters = dict.fromkeys(CHANNELS, 0)
        self._any = threading.Condition()
        self._total = 0
        self._lock = threading.Lock()
        # channel -> payload (None: any) -> waiters; a notification finds its waiters directly
        self._waiters: dict[str, dict[str | None, set[AsyncWaiter]]] = {c: {} for c in CHANNELS}
        # loop -> the (channel, payload) deliveries scheduled on it and not yet run
        self._scheduled: dict[asyncio.AbstractEventLoop, set[tuple[str, str]]] = {}
        # PostgreSQL: the backend pids of this process's store connections. What they notify
        # was fired here at their commit already, so the listener skips hearing it again.
        self.own_backends: set[int] = set()

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(payload)`` for every notification; returns an unsubscribe function."""
        with self._lock:
            self._callbacks[channel].append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks[channel].remove(callback)

        return unsubscribe

    def fire(self, channel: str, payload: str = "") -> None:
        """Deliver a notification in this process."""
        condition = self._conditions[channel]
        with condition:
            self._counters[channel] += 1
            condition.notify_all()
        with self._any:
            self._total += 1
            self._any.notify_all()
        with self._lock:
            callbacks = list(self._callbacks[channel])
            loops = {w.loop for w in self._interested(channel, payload)}
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:  # a broken subscriber must not break the publisher
                log.exception("notification callback failed on %s", channel)
        # Coalesced: one delivery per loop and notification is scheduled at a time, and it
        # finds its waiters when it runs. A burst of notifications (a thousand runs ending)
        # wakes a thousand streams once per turn of the loop, not once per notification.
        key = (channel, payload)
        for loop in loops:
            with self._lock:
                scheduled = self._scheduled.setdefault(loop, set())
                if key in scheduled:
                    continue
                scheduled.add(key)
            try:
                loop.call_soon_threadsafe(self._deliver, loop, channel, payload)
            except RuntimeError:  # the loop is closed: nobody waits there
                with self._lock:
                    self._scheduled.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop, channel: str, payload: str) -> None:
        """Wake this loop's waiters of a notification (runs on that loop)."""
        with self._lock:
            scheduled = self._scheduled.get(loop)
            if scheduled is not None:
                scheduled.discard((channel, payload))
                if not scheduled:
                    del self._scheduled[loop]
            waiters = [w for w in self._interested(channel, payload) if w.loop is loop]
        for waiter in waiters:
            waiter.wake(channel)

    def _interested(self, channel: str, payload: str) -> list[AsyncWaiter]:
        """The waiters a notification concerns (call with the lock held)."""
        index = self._waiters[channel]
        if not index:
            return []
        if not payload:
            return list({w for waiters in index.values() for w in waiters})
        return list(index.get(None, ())) + list(index.get(payload, ()))

    def _register(self, waiter: AsyncWaiter, interests: Interests) -> None:
        with self._lock:
            self._unregister_locked(waiter)
            waiter.interests = {
                channel: None if payloads is None else frozenset(payloads)
                for channel, payloads in interests.items()
            }
            for channel, payloads in waiter.interests.items():
                index = self._waiters[channel]
                for key in (None,) if payloads is None else payloads:
                    index.setdefault(key, set()).add(waiter)

    def _unregister_locked(self, waiter: AsyncWaiter) -> None:
        for channel, payloads in waiter.interests.items():
            index = self._waiters[channel]
            for key in (None,) if payloads is None else payloads:
                found = index.get(key)
                if found is not None:
                    found.discard(waiter)
                    if not found:
                        del index[key]
        waiter.interests = {}

    @contextlib.contextmanager
    def waiter(self, interests: Interests) -> Iterator[AsyncWaiter]:
        """An ``AsyncWaiter`` for the running event loop, registered for a ``with`` block."""
        waiter = AsyncWaiter(self, asyncio.get_running_loop())
        self._register(waiter, interests)
        try:
            yield waiter
        finally:
            with self._lock:
                self._unregister_locked(waiter)

    def waiting(self) -> int:
        """How many async waiters are registered (for figures and tests)."""
        with self._lock:
            return len({w for index in self._waiters.values() for ws in index.values() for w in ws})

    def counter(self, channel: str) -> int:
        """How many notifications this channel has seen (for ``wait``)."""
        return self._counters[channel]

    def total(self) -> int:
        """How many notifications all channels together have seen (for ``wait_any``)."""
        return self._total

    def wait_any(self, seen: int, timeout: float) -> int:
        """Block until any channel fires after ``total()`` was ``seen``, or the timeout."""
        with self._any:
            self._any.wait_for(lambda: self._total != seen, timeout=timeout)
            return self._total

    def wait(self, channel: str, seen: int, timeout: float) -> int:
        """Block until the channel's counter moves past ``seen`` or the timeout; returns it."""
        condition = self._conditions[channel]
        with condition:
            condition.wait_for(lambda: self._counters[channel] != seen, timeout=timeout)
            return self._counters[channel]


async def wait_until(
    notifier: Notifier,
    interests: Interests,
    check: Callable[[], bool],
    timeout: float,
    *,
    recheck: float | None = None,
    waiter: AsyncWaiter | None = None,
    checked: bool = False,
) -> bool:
    """Wait on the event loop until ``check()`` holds or ``timeout`` seconds passed.

    ``check`` reads the store, so it runs in a short thread hop; it runs again only when a
    matching notification arrives (or every ``recheck`` seconds, as a fallback for changes
    that announce nothing). Returns the last result of ``check``.

    ``waiter``: one the caller registered already (``Notifier.waiter``), given these
    ``interests`` here. ``checked``: the caller looked at the store after the waiter was
    registered (or the waiter listened from before the change could happen), so the wait
    comes first; ``check`` then runs after every wake-up and once at the timeout.
    """
    from anyio import to_thread

    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        if waiter is None:
            waiter = stack.enter_context(notifier.waiter(interests))
        else:
            waiter.set_interests(interests)
        while True:
            timed_out = False
            if checked:
                remaining = deadline - time.monotonic()
                wait = remaining if recheck is None else min(remaining, recheck)
                woken = await waiter.wait(wait)
                # A wait to the deadline that nothing woke is the timeout, even when the loop's
                # timer fired a little early (uvloop rounds timers to the millisecond).
                timed_out = not woken and wait >= remaining
            checked = True
            if await to_thread.run_sync(check):
                return True
            if timed_out or deadline - time.monotonic() <= 0:
                return False


def announce(session: Session, channel: str, payload: str = "") -> None:
    """Announce a change made in this session's transaction; delivered once it commits."""
    session.info.setdefault(_PENDING_KEY, []).append((channel, payload))


def announced(session: Session, channel: str) -> list[str]:
    """The payloads announced on ``channel`` in this session's transaction so far."""
    return [p for c, p in session.info.get(_PENDING_KEY) or () if c == channel]


def withdraw(session: Session, channel: str, payload: str) -> None:
    """Take back an announcement of this transaction that nobody needs any more."""
    pending = session.info.get(_PENDING_KEY)
    if pending:
        pending[:] = [item for item in pending if item != (channel, payload)]


def _distinct(pending: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The announcements worth sending: each once, and one per channel where no listener
    reads the payload (a transaction that queues 1,000 executions wakes workers once);
    the ids of ENDED only while there are few of them (else one empty payload)."""
    out: dict[tuple[str, str], None] = {}
    ended = {payload for channel, payload in pending if channel == ENDED}
    collapse = set(_PAYLOAD_UNUSED)
    if len(ended) > MAX_ENDED_PAYLOADS or "" in ended:
        collapse.add(ENDED)
    for channel, payload in pending:
        out[(channel, "" if channel in collapse else payload)] = None
    return list(out)


def install(session_class: type[Session], notifier: Notifier) -> None:
    """Send announcements at commit: ``pg_notify`` in one statement, then in-process."""

    @event.listens_for(session_class, "before_commit")
    def _before_commit(session: Session) -> None:
        pending = session.info.get(_PENDING_KEY)
        if not pending or session.get_bind().dialect.name != "postgresql":
            return
        pairs = _distinct(pending)
        for start in range(0, len(pairs), 100):
            chunk = pairs[start : start + 100]
            session.execute(select(*(func.pg_notify(c, p) for c, p in chunk)))

    @event.listens_for(session_class, "after_commit")
    def _after_commit(session: Session) -> None:
        pending = session.info.pop(_PENDING_KEY, None)
        for channel, payload in _distinct(pending or []):
            notifier.fire(channel, payload)

    @event.listens_for(session_class, "after_rollback")
    def _after_rollback(session: Session) -> None:
        session.info.pop(_PENDING_KEY, None)


async def listen_postgres(conninfo: str, notifier: Notifier, ready: threading.Event) -> None:
    """LISTEN on every channel and fire what other processes announce, on the event loop.

    A notification sent by one of this process's own store connections (its backend pid is in
    ``notifier.own_backends``) was fired in-process at its commit: it is not fired twice, which
    would wake every waiter of it a second time for a look that finds nothing new.

    Runs until the connection is lost (then it raises; ``BackgroundTasks.keep_running``
    starts it again). On every (re)connection every channel fires once with an empty payload:
    waiters look at the store again, so nothing announced while disconnected is missed.
    """
    import psycopg

    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        for channel in CHANNELS:
            await conn.execute(f"LISTEN {channel}")
        ready.set()
        for channel in CHANNELS:
            notifier.fire(channel, "")
        try:
            own = notifier.own_backends
            async for note in conn.notifies():
                if note.pid not in own:
                    notifier.fire(note.channel, note.payload)
        finally:
            ready.clear()
