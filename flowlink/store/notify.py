"""Wake-ups between components: in-process always, across processes via PostgreSQL NOTIFY.

A change is announced inside the transaction that makes it (``announce``). After the commit the
announcement fires in this process at once; on PostgreSQL ``pg_notify`` delivers it to every other
process that listens, also only once the transaction commits. Listeners must treat a notification
as a hint to look at the store, never as the data itself, so a duplicate or a missed one is harmless
(workers also poll as a fallback).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

QUEUED = "flowlink_queued"
ENDED = "flowlink_ended"
CANCEL = "flowlink_cancel"
EVENTS = "flowlink_events"
LINK = "flowlink_link"  # a message was put in a link's outbox (payload: sync config id)
CHANNELS = (QUEUED, ENDED, CANCEL, EVENTS, LINK)
_PAYLOAD_UNUSED = frozenset({QUEUED, ENDED, LINK})  # listeners look at the store instead

Callback = Callable[[str], None]
_PENDING_KEY = "flowlink_announcements"


class Notifier:
    """Publish/subscribe on a few named channels, with a per-channel wake-up condition."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._conditions = {name: threading.Condition() for name in CHANNELS}
        self._counters = dict.fromkeys(CHANNELS, 0)
        self._any = threading.Condition()
        self._total = 0
        self._lock = threading.Lock()

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
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:  # a broken subscriber must not break the publisher
                log.exception("notification callback failed on %s", channel)

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


def announce(session: Session, channel: str, payload: str = "") -> None:
    """Announce a change made in this session's transaction; delivered once it commits."""
    session.info.setdefault(_PENDING_KEY, []).append((channel, payload))


def _distinct(pending: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The announcements worth sending: each once, and one per channel where no listener
    reads the payload (a transaction that queues 1,000 executions wakes workers once)."""
    out: dict[tuple[str, str], None] = {}
    for channel, payload in pending:
        out[(channel, "" if channel in _PAYLOAD_UNUSED else payload)] = None
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


class PostgresListener:
    """A thread that LISTENs on every channel and fires notifications from other processes."""

    def __init__(self, conninfo: str, notifier: Notifier) -> None:
        self._conninfo = conninfo
        self._notifier = notifier
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowlink-listen", daemon=True)
        self.ready = threading.Event()

    def start(self) -> None:
        """Start listening in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}")
                    self.ready.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._notifier.fire(note.channel, note.payload)
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("lost the PostgreSQL notification connection; reconnecting")
                # Wake everyone: they re-check the store, so nothing is missed while reconnecting.
                for channel in CHANNELS:
                    self._notifier.fire(channel, "")
                self._stop.wait(1.0)
