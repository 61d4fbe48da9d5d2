"""The connecting side of links: one connector per enabled sync config with a ``remote_url``.

A connector exchanges with the other end's sync endpoint:

- **interval mode** (``sync_interval`` set): every interval it sends everything pending and
  applies the answer; it goes again at once while either side still has messages waiting;
- **immediate mode** (unset): a *sender* sends as soon as something changes here, and a
  *poller* keeps a long poll open so the other end can answer the moment it has news.

Acks of the messages received are sent with the next exchange. While the other end cannot
be reached, exchanges back off exponentially with jitter; ``sync.connected`` and
``sync.disconnected`` events mark the changes of state. ``LinkManager`` starts, restarts
(when a config changes) and stops connectors.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from sqlalchemy import select

from flowlink.errors import NotFound
from flowlink.events.service import record
from flowlink.linking import outbox
from flowlink.linking.exchange import apply_messages, pending_messages
from flowlink.linking.protocol import MAX_MESSAGES, MAX_POLL_SECONDS, envelope, for_peer
from flowlink.linking.service import (
    STATE_WRITE_EVERY,
    note_link_state,
    private_key_of,
    public_keys_of,
)
from flowlink.linking.transport import LinkRefused, LinkUnavailable, TlsOptions, Transport
from flowlink.observability import metrics, tracing
from flowlink.settings import ServerSettings, resolve_secret_key
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import SyncConfig, Workspace

log = logging.getLogger(__name__)
BACKOFF_START = 0.25
IDLE_CHECK_SECONDS = 0.25  # the sender looks for changes (a run's start, logs) this often
# What one exchange came to.
BUSY, DONE, IDLE, FAILED = "busy", "done", "idle", "failed"


class Connector:
    """Keeps one link's connecting end exchanging with the other end."""

    def __init__(self, store: Store, settings: ServerSettings, config: SyncConfig) -> None:
        self.store = store
        self.settings = settings
        self.config_id = config.id
        self.name = config.name
        self.workspace_id = config.workspace_id
        self.version = (config.updated_at, config.enabled)
        self.interval = config.sync_interval
        with store.read() as session:
            slug = session.scalar(select(Workspace.slug).where(Workspace.id == config.workspace_id))
        self.label = f"{slug}/{config.name}"  # how metrics name this link
        self.transport = Transport(
            str(config.remote_url),
            private_key_of(config, resolve_secret_key(settings)),
            list(public_keys_of(config).values()),
            TlsOptions(config.ca_certificate, config.verify_ssl),
            timeout=settings.link_timeout,
        )
        self._stop = threading.Event()
        self._acks: list[str] = []
        self._acks_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._connected: bool | None = (config.state or {}).get("connected")
        self._failures = 0
        self._state_written = 0.0
        self._threads: list[threading.Thread] = []

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start exchanging in the background."""
        loops = [self._interval_loop] if self.interval else [self._sender_loop, self._poll_loop]
        for loop in loops:
            thread = threading.Thread(
                target=loop, name=f"flowlink-link-{self.name}-{loop.__name__}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop exchanging (an exchange in flight is abandoned; nothing is lost)."""
        self._stop.set()
        self.store.notifier.fire(notify.LINK, self.config_id)
        self.transport.close()
        for thread in self._threads:
            thread.join(timeout=5)

    # --- loops ----------------------------------------------------------------------------

    def _interval_loop(self) -> None:
        assert self.interval is not None
        while not self._stop.is_set():
            result = self._exchange_safely(carry_outbox=True, poll=None)
            if result == FAILED:
                self._stop.wait(self._backoff())
            elif result != BUSY:
                self._stop.wait(self.interval)

    def _sender_loop(self) -> None:
        notifier = self.store.notifier
        while not self._stop.is_set():
            seen = notifier.total()
            result = self._exchange_safely(carry_outbox=True, poll=None, skip_if_idle=True)
            if result == FAILED:
                self._stop.wait(self._backoff())
            elif result == IDLE:
                notifier.wait_any(seen, IDLE_CHECK_SECONDS)
                time.sleep(0.002)  # let changes made together go out together

    def _poll_loop(self) -> None:
        poll = 0.0  # the first exchange answers at once: the link's state is known at start
        while not self._stop.is_set():
            if self._exchange_safely(carry_outbox=False, poll=poll) == FAILED:
                self._stop.wait(self._backoff())
            else:
                poll = min(self.settings.link_poll, MAX_POLL_SECONDS)

    # --- one exchange ---------------------------------------------------------------------

    def _exchange_safely(
        self, *, carry_outbox: bool, poll: float | None, skip_if_idle: bool = False
    ) -> str:
        """One exchange; returns BUSY, DONE, IDLE (nothing to send) or FAILED."""
        try:
            result = self.exchange(carry_outbox=carry_outbox, poll=poll, skip_if_idle=skip_if_idle)
        except (LinkUnavailable, LinkRefused) as error:
            if not self._stop.is_set():
                self._failed(error)
            return FAILED
        except Exception as error:  # keep the link alive; the error is in the log and state
            log.exception("link %s: exchange failed", self.name)
            self._failed(error)
            return FAILED
        if result != IDLE:
            self._succeeded()
        return result

    def exchange(
        self, *, carry_outbox: bool = True, poll: float | None = None, skip_if_idle: bool = False
    ) -> str:
        """Send what is pending (and acks) and apply the answer.

        Returns BUSY if more is waiting on either side, DONE, or IDLE when ``skip_if_idle``
        and there was nothing to send.
        """
        messages: list[dict[str, Any]] = []
        if carry_outbox:
            try:
                messages = pending_messages(self.store, self.config_id, MAX_MESSAGES - 1)
            except NotFound as error:
                raise LinkRefused(error.message) from None
        if skip_if_idle and not messages:
            return IDLE  # acks alone wait for the poller, which is about to ask again anyway
        messages = for_peer(messages, self.transport.peer_features)
        with self._acks_lock:
            acks, self._acks = self._acks, []
        if acks:
            messages.append(outbox.new_message("ack", ids=acks))
        try:
            read_timeout = None if poll is None else poll + self.settings.link_timeout
            began = time.monotonic()
            with tracing.span(
                "link exchange", kind="CLIENT", **{"flowlink.link": self.label}
            ) as span:
                if span is not None:
                    span.set_attribute("flowlink.link.messages", len(messages))
                answer = self.transport.exchange(
                    envelope(messages, poll), read_timeout=read_timeout
                )
            if not poll:  # a held long poll measures the other end's idleness, not latency
                metrics.link_exchanged(self.label, time.monotonic() - began)
        except BaseException:
            with self._acks_lock:
                self._acks[:0] = acks  # not delivered: send them next time
            raise
        with self.store.write() as session:
            config, workspace = self._load(session)
            received = apply_messages(
                session,
                config,
                workspace,
                answer.messages,
                default_max_runtime=self.settings.default_max_runtime,
            )
        with self._acks_lock:
            self._acks.extend(received)
        sent = len(messages) - (1 if acks else 0)
        return BUSY if received or sent >= MAX_MESSAGES - 1 else DONE

    def _load(self, session: Any) -> tuple[SyncConfig, Workspace]:
        config = session.get(SyncConfig, self.config_id)
        workspace = session.get(Workspace, self.workspace_id)
        if config is None or workspace is None:
            raise LinkRefused(f"sync config {self.name!r} was deleted")
        return config, workspace

    # --- state ----------------------------------------------------------------------------

    def _backoff(self) -> float:
        delay = min(self.settings.link_backoff_max, BACKOFF_START * 2 ** max(self._failures - 1, 0))
        return float(delay * random.uniform(0.5, 1.0))

    def _succeeded(self) -> None:
        with self._state_lock:
            self._failures = 0
            metrics.link_state(self.label, True)
            changed = self._connected is not True
            self._connected = True
            due = time.monotonic() - self._state_written >= STATE_WRITE_EVERY.total_seconds()
        if changed or due:  # a busy link does not rewrite its config on every exchange
            self._set_state(changed, connected=True, last_error=None)

    def _failed(self, error: Exception) -> None:
        with self._state_lock:
            self._failures += 1
            metrics.link_state(self.label, False)
            changed = self._connected is not False
            self._connected = False
        reason = getattr(error, "reason", None)
        message = str(error)
        if changed:
            log.warning("link %s: disconnected: %s", self.name, message)
        self._set_state(changed, connected=False, last_error=message, reason=reason)

    def _set_state(self, changed: bool, **state: Any) -> None:
        with self._state_lock:
            self._state_written = time.monotonic()
        with self.store.write() as session:
            config = session.get(SyncConfig, self.config_id)
            workspace = session.get(Workspace, self.workspace_id)
            if config is None or workspace is None:
                return
            if changed:
                state["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            note_link_state(config, **state)
            if changed:
                kind = "sync.connected" if state["connected"] else "sync.disconnected"
                payload: dict[str, Any] = {
                    "syncConfig": self.name,
                    "remoteUrl": self.transport.remote_url,
                }
                if not state["connected"]:
                    payload.update(error=state.get("last_error"), reason=state.get("reason"))
                record(session, workspace, kind, payload)


class LinkManager:
    """Runs a connector for every enabled sync config with a ``remote_url`` in the store."""

    def __init__(self, store: Store, settings: ServerSettings) -> None:
        self.store = store
        self.settings = settings
        self.connectors: dict[str, Connector] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowlink-links", daemon=True)

    def start(self) -> None:
        """Start watching the sync configs."""
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        """Stop every connector."""
        self._stop.set()
        self._thread.join(timeout=5)
        for connector in list(self.connectors.values()):
            connector.stop()
        self.connectors.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.link_refresh):
            try:
                self.refresh()
            except Exception:
                log.exception("could not refresh the link connectors")

    def refresh(self) -> None:
        """Start connectors for new or changed configs; stop those gone or disabled."""
        with self.store.read() as session:
            configs = {
                c.id: c
                for c in session.scalars(
                    select(SyncConfig).where(
                        SyncConfig.enabled.is_(True), SyncConfig.remote_url.is_not(None)
                    )
                )
            }
            for config_id in list(self.connectors):
                config = configs.get(config_id)
                current = self.connectors[config_id]
                if config is None or current.version != (config.updated_at, config.enabled):
                    current.stop()
                    del self.connectors[config_id]
            for config_id, config in configs.items():
                if config_id in self.connectors:
                    continue
                try:
                    connector = Connector(self.store, self.settings, config)
                except Exception as error:
                    log.error("link %s cannot start: %s", config.name, error)
                    continue
                self.connectors[config_id] = connector
                connector.start()
