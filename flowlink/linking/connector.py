"""The connecting side of links: one connector per enabled sync config with a ``remote_url``.

A connector exchanges with the other end's sync endpoint:

- **interval mode** (``sync_interval`` set): every interval it sends everything pending and
  applies the answer; it goes again at once while either side still has messages waiting;
- **immediate mode** (unset): a *sender* sends as soon as something changes here, and a
  *poller* keeps a long poll open so the other end can answer the moment it has news.

Acks of the messages received are sent with the next exchange. An answering end that
announced ``held-answer`` holds the answer to an exchange that started runs until it has
news (a short run's end) or a short while has passed; the acks of what such an answer carried
go with the next start, or by themselves after ``ACK_FLUSH``. While the other end cannot
be reached, exchanges back off exponentially with jitter; ``sync.connected`` and
``sync.disconnected`` events mark the changes of state.

Every connector of a process is a pair of coroutines on the server's event loop (no thread
of its own): HTTP goes through one shared ``httpx.AsyncClient`` with keep-alive
connections, store work through short thread hops, and the sender waits for the store's
notifications that concern its link (``exchange.wait_for_news``' interests). The
``LinkManager`` (a background task) starts, restarts (when a config changes) and stops
connectors, for the configs this process owns (``LinkOwnership``): on PostgreSQL several
server processes share the store and each link is driven by exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from sqlalchemy import select

from flowlink.background import BackgroundTasks
from flowlink.errors import NotFound
from flowlink.events.service import record
from flowlink.linking import outbox
from flowlink.linking.exchange import (
    START_GRACE,
    apply_messages,
    look_for_news,
    news_interests,
)
from flowlink.linking.messages import AckMessage, LinkMessage
from flowlink.linking.ownership import LinkOwnership
from flowlink.linking.protocol import HELD_ANSWER, MAX_MESSAGES, envelope, for_peer, max_poll
from flowlink.linking.service import (
    CONTROLLED,
    STATE_WRITE_EVERY,
    direction_of,
    note_link_state,
    private_key_of,
    public_keys_of,
)
from flowlink.linking.transport import (
    AsyncClients,
    LinkRefused,
    LinkUnavailable,
    TlsOptions,
    Transport,
)
from flowlink.observability import metrics, tracing
from flowlink.settings import ServerSettings, resolve_secret_key
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import SyncConfig, Workspace, utcnow
from flowlink.timestamps import format_timestamp

log = logging.getLogger(__name__)
BACKOFF_START = 0.25
# The sender looks at the store again after this long without a notification: a safety net
# (for example a separate worker process on SQLite, whose changes announce nothing here).
SENDER_FALLBACK_SECONDS = 30.0
# After an answer that carried messages, the poller renews its poll (with their acks) this
# much later. The requests and flows the applied messages woke (a wait for a run's end) then
# have the event loop and the GIL to themselves instead of sharing them with the renewal's
# signing and HTTP work (measured: 3-5 ms sooner at the end of a round trip). Nothing waits
# on the renewal: the other end keeps what it has in its outbox, and the acks are not urgent.
RENEW_AFTER_NEWS = 0.01
# The acks of what a held answer carried wait this long for an exchange that carries them
# (the next start); then the sender sends them by themselves. The other end keeps those
# messages out of its held poll meanwhile (``endpoint.IN_FLIGHT_SECONDS``, longer).
ACK_FLUSH = 0.5
# What one exchange came to.
BUSY, DONE, IDLE, FAILED = "busy", "done", "idle", "failed"


class Connector:
    """Keeps one link's connecting end exchanging with the other end (on the event loop)."""

    def __init__(
        self,
        store: Store,
        settings: ServerSettings,
        config: SyncConfig,
        http: AsyncClients | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.config_id = config.id
        self.name = config.name
        self.workspace_id = config.workspace_id
        self.version = (config.updated_at, config.enabled)
        self.interval = config.sync_interval
        # Made in a thread hop (``LinkManager``): this read does not block the event loop.
        with store.read() as session:
            slug = session.scalar(select(Workspace.slug).where(Workspace.id == config.workspace_id))
        self.label = f"{slug}/{config.name}"  # how metrics name this link
        tls = TlsOptions(config.ca_certificate, config.verify_ssl)
        self.transport = Transport(
            str(config.remote_url),
            private_key_of(config, resolve_secret_key(settings)),
            list(public_keys_of(config).values()),
            tls,
            timeout=settings.link_timeout,
            http=(http or AsyncClients()).get(tls),
        )
        self._acks: list[str] = []
        self._connected: bool | None = (config.state or {}).get("connected")
        self._failures = 0
        self._state_written = 0.0
        self._follows = True  # whether executions here may concern the link (see exchange)
        self._controlled = direction_of(config) == CONTROLLED  # runs starts from the other end
        self._task: asyncio.Task[None] | None = None

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start exchanging, as a task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"link {self.name}")

    async def stop(self) -> None:
        """Stop exchanging (an exchange in flight is abandoned; nothing is lost)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("link %s: connector failed", self.name)
            self._task = None

    async def run(self) -> None:
        """Exchange until cancelled: one loop in interval mode, sender and poller otherwise."""
        if self.interval:
            await self._interval_loop()
        else:
            await asyncio.gather(self._sender_loop(), self._poll_loop())

    # --- loops ----------------------------------------------------------------------------

    async def _interval_loop(self) -> None:
        assert self.interval is not None
        while True:
            result = await self._exchange_safely(carry_outbox=True, poll=None)
            if result == FAILED:
                await asyncio.sleep(self._backoff())
            elif result != BUSY:
                await asyncio.sleep(self.interval)

    async def _sender_loop(self) -> None:
        grace = START_GRACE.total_seconds() + 0.05
        interests = news_interests(self.config_id, self.workspace_id, True)
        with self.store.notifier.waiter(interests) as waiter:
            recheck = False
            flush = False  # acks wait to be sent: send them even with nothing else
            while True:
                listened = notify.EVENTS in waiter.interests  # while this exchange looks
                result = await self._exchange_safely(
                    carry_outbox=True, poll=None, skip_if_idle=not flush
                )
                flush = False
                if result == FAILED:
                    await asyncio.sleep(self._backoff())
                    continue
                if result == BUSY:
                    continue
                waiter.set_interests(
                    news_interests(self.config_id, self.workspace_id, self._follows)
                )
                if self._follows and not listened:
                    continue  # a run it follows now may have changed while nobody listened
                # DONE: what was pending went out, and anything put in the outbox since has
                # woken the waiter, registered all along: no look until a notification.
                timeout = grace if recheck and result == IDLE else SENDER_FALLBACK_SECONDS
                acks = bool(self._acks) and self._held_answers()
                woken = await waiter.wait(min(timeout, ACK_FLUSH) if acks else timeout)
                flush = acks and not woken and bool(self._acks)
                # A run that just started is reported after the grace: look once more then.
                recheck = bool(woken) and self._follows
                if notify.LINK in woken and self._controlled and not self._follows:
                    # Maybe a start was applied: listen to its run before looking.
                    waiter.set_interests(news_interests(self.config_id, self.workspace_id, True))

    async def _poll_loop(self) -> None:
        poll = 0.0  # the first exchange answers at once: the link's state is known at start
        while True:
            result = await self._exchange_safely(carry_outbox=False, poll=poll)
            if result == FAILED:
                await asyncio.sleep(self._backoff())
                continue
            # Longer than 60 s only to an end that said it holds that long.
            poll = min(self.settings.link_poll, max_poll(self.transport.peer_features))
            if result == BUSY:  # the answer's messages were applied: what they woke goes first
                await asyncio.sleep(RENEW_AFTER_NEWS)

    # --- one exchange ---------------------------------------------------------------------

    async def _exchange_safely(
        self, *, carry_outbox: bool, poll: float | None, skip_if_idle: bool = False
    ) -> str:
        """One exchange; returns BUSY, DONE, IDLE (nothing to send) or FAILED."""
        try:
            result = await self.exchange(
                carry_outbox=carry_outbox, poll=poll, skip_if_idle=skip_if_idle
            )
        except (LinkUnavailable, LinkRefused) as error:
            await self._failed(error)
            return FAILED
        except asyncio.CancelledError:
            raise
        except Exception as error:  # keep the link alive; the error is in the log and state
            log.exception("link %s: exchange failed", self.name)
            await self._failed(error)
            return FAILED
        if result != IDLE:
            await self._succeeded()
        return result

    async def exchange(
        self, *, carry_outbox: bool = True, poll: float | None = None, skip_if_idle: bool = False
    ) -> str:
        """Send what is pending (and acks) and apply the answer.

        Returns BUSY if more is waiting on either side, DONE, or IDLE when ``skip_if_idle``
        and there was nothing to send.
        """
        messages: list[dict[str, Any]] = []
        more = False  # changes left for the next look
        if carry_outbox:
            try:
                news = await to_thread.run_sync(
                    look_for_news, self.store, self.config_id, MAX_MESSAGES - 1
                )
            except NotFound as error:
                raise LinkRefused(error.message) from None
            messages, self._follows, more = news.messages, news.follows, news.more
        if skip_if_idle and not messages:
            return IDLE  # acks alone wait for the poller, which is about to ask again anyway
        messages = for_peer(messages, self.transport.peer_features)
        acks, self._acks = self._acks, []
        if acks:
            messages.append(AckMessage.new(ids=acks).wire())
        try:
            read_timeout = None if poll is None else poll + self.settings.link_timeout
            began = time.monotonic()
            with tracing.span(
                "link exchange", kind="CLIENT", **{"flowlink.link": self.label}
            ) as span:
                if span is not None:
                    span.set_attribute("flowlink.link.messages", len(messages))
                answer = await self.transport.exchange_async(
                    envelope(messages, poll), read_timeout=read_timeout
                )
            if not poll:  # a held long poll measures the other end's idleness, not latency
                metrics.link_exchanged(self.label, time.monotonic() - began)
        except BaseException:
            self._acks[:0] = acks  # not delivered: send them next time
            raise
        received: list[str] = []
        if answer.messages:  # an empty answer (a poll's timeout) changes nothing here
            received = await to_thread.run_sync(self._apply, answer.messages)
        self._acks.extend(received)
        sent = len(messages) - (1 if acks else 0)
        # What a held answer carried is acked by the next exchange (or ``ACK_FLUSH``): the
        # answer brought the news, there is nothing to ask for at once.
        asks = bool(received) and not (poll is None and self._held_answers())
        return BUSY if asks or more or sent >= MAX_MESSAGES - 1 else DONE

    def _held_answers(self) -> bool:
        """Whether the other end holds the answers to exchanges that start runs."""
        return HELD_ANSWER in self.transport.peer_features

    def _apply(self, messages: list[LinkMessage]) -> list[str]:
        if all(isinstance(message, AckMessage) for message in messages):
            # Acks only (the answer to a sent start): they drop messages from the outbox
            # and need neither the config nor the workspace loaded.
            with self.store.write() as session:
                for message in messages:
                    assert isinstance(message, AckMessage)
                    outbox.acknowledge(session, self.config_id, message.ids)
            return []
        with self.store.write() as session:
            config, workspace = self._load(session)
            return apply_messages(
                session,
                config,
                workspace,
                messages,
                default_max_runtime=self.settings.default_max_runtime,
            )

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

    async def _succeeded(self) -> None:
        self._failures = 0
        metrics.link_state(self.label, True)
        changed = self._connected is not True
        self._connected = True
        due = time.monotonic() - self._state_written >= STATE_WRITE_EVERY.total_seconds()
        if changed or due:  # a busy link does not rewrite its config on every exchange
            await self._set_state(changed, connected=True, last_error=None)

    async def _failed(self, error: Exception) -> None:
        self._failures += 1
        metrics.link_state(self.label, False)
        changed = self._connected is not False
        self._connected = False
        reason = getattr(error, "reason", None)
        message = str(error)
        if changed:
            log.warning("link %s: disconnected: %s", self.name, message)
        await self._set_state(changed, connected=False, last_error=message, reason=reason)

    async def _set_state(self, changed: bool, **state: Any) -> None:
        self._state_written = time.monotonic()
        await to_thread.run_sync(self._write_state, changed, state)

    def _write_state(self, changed: bool, state: dict[str, Any]) -> None:
        with self.store.write() as session:
            config = session.get(SyncConfig, self.config_id)
            workspace = session.get(Workspace, self.workspace_id)
            if config is None or workspace is None:
                return
            if changed:
                state["since"] = format_timestamp(utcnow())
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


@dataclass(frozen=True)
class _Wanted:
    """A config that should have a connector, as read by the link manager."""

    version: tuple[Any, bool]
    make: Callable[[], Connector]


class LinkManager:
    """Runs a connector for every enabled sync config with a ``remote_url`` that this
    process owns, as tasks on the event loop (its ``refresh`` is a background job)."""

    def __init__(self, store: Store, settings: ServerSettings) -> None:
        self.store = store
        self.settings = settings
        self.connectors: dict[str, Connector] = {}
        self.http = AsyncClients()
        self.ownership = LinkOwnership(store)

    def schedule(self, tasks: BackgroundTasks) -> None:
        """Refresh the connectors at once and every ``FLOWLINK_LINK_REFRESH`` seconds."""
        tasks.every("link manager", self.settings.link_refresh, self.refresh, first="now")

    async def stop(self) -> None:
        """Stop every connector and give up the links this process owns."""
        connectors, self.connectors = list(self.connectors.values()), {}
        await asyncio.gather(*(connector.stop() for connector in connectors))
        await self.http.close()
        await self.ownership.close()

    async def refresh(self) -> None:
        """Start connectors for new or changed configs this process owns; stop the others."""
        wanted = await to_thread.run_sync(self._wanted)
        owned = await self.ownership.claim(set(wanted))
        for config_id in list(self.connectors):
            current = self.connectors[config_id]
            want = wanted.get(config_id)
            if config_id not in owned or want is None or current.version != want.version:
                del self.connectors[config_id]
                await current.stop()
        new = [wanted[i] for i in owned if i in wanted and i not in self.connectors]
        # Made in a thread hop: the first use of a key decrypts it, which costs milliseconds.
        for connector in await to_thread.run_sync(_make_all, new):
            self.connectors[connector.config_id] = connector
            connector.start()

    def _wanted(self) -> dict[str, _Wanted]:
        """The enabled configs with a ``remote_url``, each with how to make its connector."""
        with self.store.read() as session:
            configs = session.scalars(
                select(SyncConfig).where(
                    SyncConfig.enabled.is_(True), SyncConfig.remote_url.is_not(None)
                )
            ).all()
        return {
            config.id: _Wanted((config.updated_at, config.enabled), self._maker(config))
            for config in configs
        }

    def _maker(self, config: SyncConfig) -> Callable[[], Connector]:
        return lambda: Connector(self.store, self.settings, config, self.http)


def _make_all(wanted: list[_Wanted]) -> list[Connector]:
    made = []
    for want in wanted:
        try:
            made.append(want.make())
        except Exception as error:
            log.error("a link cannot start: %s", error)
    return made
