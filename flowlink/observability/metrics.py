"""Prometheus metrics, counted as things happen (never by scanning tables on a scrape).

Counters and histograms change when an execution starts or ends, an event is recorded, a link
exchanges or an HTTP request is answered. Changes made inside a store transaction are counted
once it commits (``after_commit``), so a rolled-back transaction counts nothing.

Several processes on one host (a server and ``flowlink worker`` processes) share their metrics
through prometheus-client's multi-process mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory writable by all of them before they start, and any server's ``/api/v1/metrics``
answers for all of them.

Workspace and link labels are capped (``FLOWLINK_METRICS_MAX_LABELS``, 100 by default per
label and process): values past the cap are counted under ``_other``, so a host with thousands
of workspaces cannot blow up the series count.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

OTHER = "_other"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_AFTER_COMMIT = "flowlink_metrics_after_commit"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class LabelCap:
    """Lets the first ``limit`` distinct values of a label through; the rest become ``_other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        value = value or ""
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


def _label_limit() -> int:
    raw = os.environ.get("FLOWLINK_METRICS_MAX_LABELS", "")
    try:
        return max(1, int(raw)) if raw else 100
    except ValueError as exc:
        raise ValueError(f"FLOWLINK_METRICS_MAX_LABELS must be an integer, got {raw!r}") from exc


workspace_label = LabelCap(_label_limit())
link_label = LabelCap(_label_limit())

EXECUTIONS_STARTED = Counter(
    "flowlink_executions_started", "Executions started by a worker.", ["workspace"]
)
EXECUTIONS_ENDED = Counter(
    "flowlink_executions_ended", "Executions ended, by status.", ["workspace", "status"]
)
EXECUTION_DURATION = Histogram(
    "flowlink_execution_duration_seconds",
    "Run time of ended executions (start to end).",
    ["workspace"],
    buckets=DURATION_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "flowlink_queue_wait_seconds",
    "Time from queued to started.",
    ["workspace"],
    buckets=LATENCY_BUCKETS,
)
RUNNERS_BUSY = Gauge(
    "flowlink_runners_busy", "Executions running in workers now.", multiprocess_mode="livesum"
)
RUNNERS_WARM = Gauge(
    "flowlink_runners_warm", "Runner processes forked and ready.", multiprocess_mode="livesum"
)
EVENTS_INGESTED = Counter("flowlink_events_ingested", "Events recorded.", ["workspace"])
LINK_CONNECTED = Gauge(
    "flowlink_link_connected",
    "1 while a link's connecting end exchanges successfully, 0 while it is disconnected.",
    ["link"],
    multiprocess_mode="livemax",
)
LINK_EXCHANGE = Histogram(
    "flowlink_link_exchange_seconds",
    "Round trip of one link exchange (connecting end; held long polls excluded).",
    ["link"],
    buckets=LATENCY_BUCKETS,
)
LINK_EXCHANGE_FAILURES = Counter(
    "flowlink_link_exchange_failures", "Link exchanges that failed.", ["link"]
)
LINK_REJECTIONS = Counter(
    "flowlink_link_rejections", "Incoming link exchanges refused, by reason.", ["reason"]
)
HTTP_REQUESTS = Counter(
    "flowlink_http_requests", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "flowlink_http_request_duration_seconds",
    "Time to answer an HTTP request (streams: until they end).",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)


# --- counting once a transaction commits --------------------------------------------------


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` once this session's transaction commits (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


@sa_event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(_AFTER_COMMIT, None) or ():
        action()


@sa_event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def count_started(session: Session, started: Iterable[tuple[str, float]]) -> None:
    """Count started executions: (workspace slug, seconds waited in the queue) each."""
    items = list(started)

    def action() -> None:
        for slug, waited in items:
            label = workspace_label(slug)
            EXECUTIONS_STARTED.labels(label).inc()
            QUEUE_WAIT.labels(label).observe(max(waited, 0.0))

    after_commit(session, action)


def count_ended(session: Session, ended: Iterable[tuple[str, str, float]]) -> None:
    """Count ended executions: (workspace slug, status, run seconds) each."""
    items = list(ended)

    def action() -> None:
        for slug, status, seconds in items:
            label = workspace_label(slug)
            EXECUTIONS_ENDED.labels(label, status).inc()
            EXECUTION_DURATION.labels(label).observe(max(seconds, 0.0))

    after_commit(session, action)


def count_events(session: Session, slugs: Iterable[str | None]) -> None:
    """Count recorded events by workspace slug (None: organization-wide events)."""
    counts: dict[str, int] = {}
    for slug in slugs:
        counts[slug or ""] = counts.get(slug or "", 0) + 1

    def action() -> None:
        for slug, n in counts.items():
            EVENTS_INGESTED.labels(workspace_label(slug)).inc(n)

    after_commit(session, action)


def set_runners(busy: int, warm: int) -> None:
    """Record this process's busy and warm runners."""
    RUNNERS_BUSY.set(busy)
    RUNNERS_WARM.set(warm)


def link_exchanged(link: str, seconds: float) -> None:
    """Record one successful link exchange."""
    LINK_EXCHANGE.labels(link_label(link)).observe(seconds)


def link_state(link: str, connected: bool) -> None:
    """Record a link's state; a failure is also counted."""
    label = link_label(link)
    LINK_CONNECTED.labels(label).set(1 if connected else 0)
    if not connected:
        LINK_EXCHANGE_FAILURES.labels(label).inc()


def link_rejected(reason: str) -> None:
    """Count an incoming link exchange refused for ``reason``."""
    LINK_REJECTIONS.labels(reason).inc()


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request."""
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


# --- exposition ---------------------------------------------------------------------------


class StoreGauges(Collector):
    """Gauges of the store's state, read at scrape time with indexed queries.

    Queue depth and outbox depth are states, not happenings: each is one indexed count
    (``ix_executions_queue``, ``ix_link_outbox_config``) over rows that are waiting, never a
    scan of the executions or events tables.
    """

    def __init__(self, read: Callable[[], tuple[int, dict[str, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Yield the queue and outbox gauges."""
        queued, outboxes = self._read()
        queue = GaugeMetricFamily(
            "flowlink_queue_depth", "Executions waiting to be claimed by a worker."
        )
        queue.add_metric([], queued)
        yield queue
        outbox = GaugeMetricFamily(
            "flowlink_link_outbox_depth", "Messages waiting in a link's outbox.", labels=["link"]
        )
        for link, depth in outboxes.items():
            outbox.add_metric([link], depth)
        yield outbox


def multiprocess_dir() -> str | None:
    """The shared metrics directory of a multi-process host, if one is set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Combined(Collector):
    """Several collectors exposed as one."""

    def __init__(self, *collectors: Any) -> None:
        self._collectors = collectors

    def collect(self) -> Iterable[Any]:
        """Yield every collector's metrics."""
        for collector in self._collectors:
            yield from collector.collect()


def render(store_gauges: Collector | None = None) -> bytes:
    """The Prometheus text exposition: this host's processes plus the store gauges."""
    source: Any
    if multiprocess_dir():
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:
        source = REGISTRY  # this process's metrics and its process statistics
    extra = [store_gauges] if store_gauges is not None else []
    return bytes(generate_latest(_Combined(source, *extra)))


def process_exited(pid: int | None = None) -> None:
    """Drop a stopped process's live gauges from the shared directory (multi-process mode)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid or os.getpid())
