"""Refused unauthenticated requests, recorded without letting a flood fill the store.

A refused webhook call or sync exchange is worth an event, but anyone can send thousands a
second. Refusals are grouped by a key (workspace, what was called, reason, client address)
and a time window: the first of a window is recorded at once (``count: 1``); the others are
only counted, and when the window closes one event records how many there were
(``count``, ``firstAt``, ``lastAt``, ``windowSeconds``). The sum of ``count`` over the events
is the number of refusals. Past ``MAX_KEYS`` open windows, new clients share the address
``*``, so rotating addresses cannot grow memory or events either.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from flowlink.store.engine import Store
from flowlink.store.models import utcnow
from flowlink.timestamps import format_timestamp

MAX_KEYS = 1000
ANY_CLIENT = "*"

# Records one event: given a write session and what to add to its payload.
Writer = Callable[[Session, dict[str, Any]], None]


def _now_text() -> str:
    return format_timestamp(utcnow())


@dataclass
class _Window:
    started: float
    first_at: str
    last_at: str
    count: int  # refusals after the first, not recorded yet
    write: Writer


class RejectionLog:
    """Aggregates refusals for one store (see the module docstring)."""

    def __init__(self, store: Store, window: float) -> None:
        self.store = store
        self.window = window
        self._lock = threading.Lock()
        self._open: dict[tuple[Hashable, ...], _Window] = {}
        self._due: list[_Window] = []
        self._thread: threading.Thread | None = None

    def note(self, key: tuple[Hashable, ...], client: str | None, write: Writer) -> None:
        """Count one refusal; record it now if it is the first of its window."""
        now = time.monotonic()
        with self._lock:
            full_key = (*key, client or ANY_CLIENT)
            if full_key not in self._open and len(self._open) >= MAX_KEYS:
                full_key = (*key, ANY_CLIENT)
            current = self._open.get(full_key)
            if current is not None and now - current.started < self.window:
                current.count += 1
                current.last_at = _now_text()
                current.write = write  # the latest request's details go into the summary
                return
            if current is not None and current.count:
                self._due.append(current)
            stamp = _now_text()
            self._open[full_key] = _Window(now, stamp, stamp, 0, write)
            self._start_flusher()
        with self.store.write() as session:
            write(session, {"count": 1})

    def flush(self, *, everything: bool = False) -> int:
        """Record the summaries of closed windows (all open ones with ``everything``)."""
        now = time.monotonic()
        with self._lock:
            due, self._due = self._due, []
            for key, window in list(self._open.items()):
                if everything or now - window.started >= self.window:
                    del self._open[key]
                    if window.count:
                        due.append(window)
        if due:
            with self.store.write() as session:
                for window in due:
                    window.write(
                        session,
                        {
                            "count": window.count,
                            "firstAt": window.first_at,
                            "lastAt": window.last_at,
                            "windowSeconds": self.window,
                        },
                    )
        return len(due)

    def _start_flusher(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="rejections", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.window / 4))
            try:
                self.flush()
            except Exception:
                continue
            with self._lock:
                if not self._open and not self._due:
                    self._thread = None
                    return


_logs: weakref.WeakKeyDictionary[Store, RejectionLog] = weakref.WeakKeyDictionary()
_logs_lock = threading.Lock()


def rejection_log(store: Store, window: float) -> RejectionLog:
    """The aggregator of this store (one per store and process)."""
    with _logs_lock:
        log = _logs.get(store)
        if log is None or log.window != window:
            log = _logs[store] = RejectionLog(store, window)
        return log


def flush_rejections(store: Store) -> None:
    """Record the counts of every open window now (when the server stops)."""
    with _logs_lock:
        log = _logs.get(store)
    if log is not None:
        log.flush(everything=True)
