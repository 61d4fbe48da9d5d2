"""The answering side of an exchange: ``POST .../sync_config/{name}/sync``.

Nothing in a request is acted on before its signature holds (``check_exchange``).
Then, in one transaction, its messages are applied and recorded as received. The answer
carries this end's pending messages and an ``ack`` of the request's; with ``poll`` set and
nothing to send, the answer waits (without holding a transaction) until something changes
here or the poll time is up: the long poll of the immediate mode. The wait holds no
thread and no transaction (``exchange.wait_for_news``).

An exchange that started runs here, from an end that announced ``held-answer``, is held
like a short poll (``ANSWER_HOLD``): a run that ends meanwhile goes back in the same answer
as the start's ack, one exchange per round trip instead of two (``_Flights``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx
from anyio import CapacityLimiter, to_thread

from flowlink.errors import Invalid
from flowlink.linking import signing
from flowlink.linking.exchange import (
    START_GRACE,
    News,
    apply_messages,
    follows_and_outgoing,
    look_for_news,
    news_interests,
    wait_for_news,
)
from flowlink.linking.inbound import SyncRejected, check_exchange, note_rejection
from flowlink.linking.messages import AckMessage
from flowlink.linking.protocol import (
    FEATURES,
    FEATURES_HEADER,
    HELD_ANSWER,
    MAX_MESSAGES,
    envelope,
    features_of,
    for_peer,
    parse_envelope,
)
from flowlink.linking.service import (
    ANSWERING_STAMP_EVERY,
    get_link,
    note_link_state,
    private_key_of,
)
from flowlink.settings import ServerSettings, resolve_secret_key
from flowlink.store import notify
from flowlink.store.engine import Store

CONTENT_TYPE = "application/json"
# (workspace slug, config name) -> (sync config id, workspace id), learnt from exchanges
_LINK_IDS: dict[tuple[str, str], tuple[str, str]] = {}
# Exchanges take their thread hops from a few threads of their own, not from the pool the API
# shares: a thousand polls renewed at once queue here instead of taking every thread from the
# API's requests. SQLite has one writer, so a few threads do; on PostgreSQL transactions run
# side by side and a hop mostly waits for the database, so more overlap.
EXCHANGE_THREADS = {"sqlite": 6, "postgresql": 16}
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, CapacityLimiter]] = (
    weakref.WeakKeyDictionary()
)


def exchange_limiter(dialect: str) -> CapacityLimiter:
    """The running loop's limiter of exchange thread hops (a limiter belongs to one loop)."""
    limiters = _limiters.setdefault(asyncio.get_running_loop(), {})
    if dialect not in limiters:
        limiters[dialect] = CapacityLimiter(EXCHANGE_THREADS.get(dialect, 6))
    return limiters[dialect]


@dataclass(frozen=True)
class SignedAnswer:
    """The body and headers (signature included) of an exchange's answer."""

    content: bytes
    headers: httpx.Headers


# A held poll that runs out answers an empty envelope, the same bytes each time for a link:
# its signature (an RSA-PSS signing, in a thread hop) is reused for a while. The reused
# answer is still signed by this end's key, bound to the request's method and URL, and
# within the freshness the other end checks (5 minutes): it proves what a new signature
# would (the other end keeps no nonces of answers), and it carries nothing. 150 s: with
# 55 s polls two renewals in three reuse it, with 120 s polls one in two, and an answer is
# never older than 150 s, so the other end's clock may still be up to 150 s ahead.
EMPTY_ANSWER_REUSE_SECONDS = 150.0
_EMPTY_CACHE_SIZE = 8192


@dataclass(frozen=True, slots=True)
class _EmptyAnswer:
    signed_at: float
    private_key: Any
    request: tuple[str, str, str]  # method, URL, the features the request announced
    content: bytes
    headers: tuple[tuple[str, str], ...]  # compact: a thousand links keep one each

    def answer(self) -> SignedAnswer:
        return SignedAnswer(self.content, httpx.Headers(list(self.headers)))


_EMPTY_ANSWERS: dict[str, _EmptyAnswer] = {}  # sync config id -> its last signed empty answer

# How long the answer to an exchange that started runs waits for their ends before it looks
# a last time and answers what it has (the acks at least): the start's grace and a little,
# so a run that goes on is reported "running" by that look or, as before, the held poll.
ANSWER_HOLD = START_GRACE.total_seconds() + 0.05
# What an answer to a ``held-answer`` end carried is kept out of the link's held poll until
# the other end acks it (it sends acks within ``connector.ACK_FLUSH``), at most this long:
# after it, the held poll sends it again (the outbox still has it), so a lost answer is
# made good.
IN_FLIGHT_SECONDS = 2.0


@dataclass(slots=True)
class _Flight:
    """What ``_Flights`` keeps of one link: its held answers and the messages in flight."""

    holders: int = 0  # how many answers of the link may be held
    looked: float = 0.0  # while held: when a held answer's last look began
    # while held: when a notification last woke the held poll to a look it skipped
    skipped: float | None = None
    sent: dict[str, float] = field(default_factory=dict)  # message id -> held back until

    def expire(self, now: float) -> None:
        """Forget the messages held back no more (never acked here: another process, a peer
        gone)."""
        for message_id in [key for key, until in self.sent.items() if until <= now]:
            del self.sent[message_id]


class _Flights:
    """Per link, in this process: the answers held for it and the messages they carried.

    While an exchange's answer is held, the link's held poll does not look (the held answer
    takes what comes up), and what such answers carried stays out of the held poll until
    acked or ``IN_FLIGHT_SECONDS`` passed. Nothing here needs to be durable: the outbox keeps
    every message until the other end acks it, so at worst a message goes out twice (and is
    applied once) or a poll answers it a little later. Other server processes of one
    PostgreSQL store do not see this: a message may then go out twice, as it could before.

    A link has one record (``_Flight``) while an answer is held for it or messages it carried
    are in flight, and none otherwise (``_prune``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}  # sync config id -> its record

    def _prune(self, config_id: str, flight: _Flight) -> None:
        """Drop the link's record once it holds nothing (under the lock)."""
        if not flight.holders and not flight.sent:
            del self._flights[config_id]

    def begin(self, config_id: str) -> None:
        """An answer of the link may be held: its held poll skips its looks until ``end``."""
        with self._lock:
            flight = self._flights.setdefault(config_id, _Flight())
            flight.holders += 1
            flight.looked = time.monotonic()

    def end(self, config_id: str, notifier: notify.Notifier, *, carried: bool) -> None:
        """That answer is done (``carried``: signed after its last look). The held poll is
        woken if it skipped a look that the answer's last look may not have covered: one
        woken by a notification that came after that look began."""
        with self._lock:
            flight = self._flights[config_id]
            flight.holders -= 1
            if flight.holders:
                return
            looked, skipped, flight.skipped = flight.looked, flight.skipped, None
            self._prune(config_id, flight)
        if skipped is not None and (not carried or skipped >= looked):
            notifier.fire(notify.LINK, config_id)

    def looking(self, config_id: str) -> None:
        """A held answer begins a look: what changed before is taken by it."""
        with self._lock:
            flight = self._flights.get(config_id)
            if flight is not None and flight.holders:
                flight.looked = time.monotonic()

    def held(self, config_id: str, woken_at: float) -> bool:
        """Whether an answer is held for the link (the held poll skips its look then, which a
        notification at ``woken_at`` asked for)."""
        with self._lock:
            flight = self._flights.get(config_id)
            if flight is None or not flight.holders:
                return False
            flight.skipped = max(woken_at, flight.skipped or 0.0)
            return True

    def sent(self, config_id: str, messages: list[dict[str, Any]]) -> None:
        """These messages went out in an answer whose acks come soon."""
        if not messages:
            return
        now = time.monotonic()
        with self._lock:
            flight = self._flights.setdefault(config_id, _Flight())
            flight.expire(now)
            flight.sent.update((m["id"], now + IN_FLIGHT_SECONDS) for m in messages)

    def acked(self, config_id: str, ids: list[str]) -> None:
        """The other end acked these: they are in flight no more."""
        with self._lock:
            flight = self._flights.get(config_id)
            if flight is None or not flight.sent:
                return
            for message_id in ids:
                flight.sent.pop(message_id, None)
            self._prune(config_id, flight)

    def unsent(self, config_id: str, news: News) -> News:
        """The held poll's news without the messages in flight, and when to look again."""
        with self._lock:
            flight = self._flights.get(config_id)
            if flight is None or not flight.sent or not news.messages:
                return news
            now = time.monotonic()
            flight.expire(now)
            if not flight.sent:
                self._prune(config_id, flight)
                return news
            kept = [m for m in news.messages if m["id"] not in flight.sent]
            if len(kept) == len(news.messages):
                return news
            again = min(flight.sent.values()) - now
        return News(kept, news.follows, news.more, again)


_FLIGHTS = _Flights()


@dataclass
class _Applied:
    """What the first, transactional part of an exchange found."""

    private_key: Any
    config_id: str
    workspace_id: str
    received: list[str]
    messages: list[dict[str, Any]]
    poll: float
    follows: bool  # whether executions here may concern the link (``follows_changes``)
    answer: SignedAnswer | None = None  # signed in the same thread hop when it need not wait
    started: list[str] = field(default_factory=list)  # the executions its starts created
    held: bool = False  # an answer held for the news of the runs it started (``ANSWER_HOLD``)
    again: float | None = None  # messages in flight held back: look again after this long


@dataclass(frozen=True)
class _Incoming:
    """One exchange as it came in."""

    workspace_slug: str
    name: str
    method: str
    url: str
    headers: httpx.Headers
    body: bytes
    client: str | None

    def answered(self) -> _Incoming:
        """What the answer still needs (its signature covers the method and URL, the
        features pick the messages): a held poll keeps no signature headers and no body."""
        features = self.headers.get(FEATURES_HEADER)
        headers = httpx.Headers({FEATURES_HEADER: features} if features is not None else {})
        return _Incoming(self.workspace_slug, self.name, self.method, self.url, headers, b"", None)


def _apply(
    store: Store,
    settings: ServerSettings,
    incoming: _Incoming,
    stopping: threading.Event | None,
    may_hold: bool = False,
) -> _Applied:
    """Authenticate and apply one exchange and collect this end's messages (one write).

    An answer that need not wait is signed here too, after the commit: one thread hop.
    ``may_hold``: the other end announced ``held-answer``; an exchange that starts runs is
    then answered after ``ANSWER_HOLD`` at most, or as soon as this end has a message.
    """
    secret = resolve_secret_key(settings)
    workspace_slug, name = incoming.workspace_slug, incoming.name
    method, url, headers, body = incoming.method, incoming.url, incoming.headers, incoming.body
    try:
        with store.write() as session:
            workspace, config = get_link(session, workspace_slug, name)
            check_exchange(session, config, method=method, url=url, headers=headers, body=body)
            try:
                data = json.loads(body)
            except ValueError:
                raise Invalid("body: not JSON", details={"field": "body"}) from None
            request = parse_envelope(data)
            started: list[str] = []
            received = apply_messages(
                session,
                config,
                workspace,
                request.messages,
                default_max_runtime=settings.default_max_runtime,
                started=started,
            )
            # Its nonce records the exchange's time: the stamp is written rarely.
            note_link_state(
                config, stamp_every=ANSWERING_STAMP_EVERY, connected=True, last_error=None
            )
            # Answer at once when the request carried news or does not poll: in this same
            # transaction, so an exchange costs one write. One that started runs, from an end
            # that takes a held answer, waits a little for their news.
            stops = stopping is not None and stopping.is_set()
            held = may_hold and bool(started) and not stops
            poll = ANSWER_HOLD if held else 0.0 if received or stops else (request.poll or 0.0)
            # A link that follows no execution has nothing to collect: its outbox is all.
            follows, messages = follows_and_outgoing(session, config, MAX_MESSAGES - 1)
            applied = _Applied(
                private_key=private_key_of(config, secret),
                config_id=config.id,
                workspace_id=workspace.id,
                received=received,
                messages=messages,
                poll=poll,
                follows=bool(messages) or follows,
                started=started,
                held=held,
            )
    except SyncRejected as rejection:
        http = {"method": method, "url": url, "client": incoming.client}
        note_rejection(store, settings.rejection_window, workspace_slug, name, rejection, http)
        raise
    if may_hold:
        acked = [i for m in request.messages if isinstance(m, AckMessage) for i in m.ids]
        if acked:
            _FLIGHTS.acked(applied.config_id, acked)
        if request.poll is None:  # a sender's exchange: its acks come soon
            _FLIGHTS.sent(applied.config_id, applied.messages)
        elif request.poll > 0:  # a poll: what other answers carry waits for their acks
            news = _FLIGHTS.unsent(applied.config_id, News(applied.messages, applied.follows))
            applied.messages, applied.again = news.messages, news.again
    if applied.messages or applied.poll <= 0:
        applied.answer = _signed(applied, applied.messages, incoming)
    return applied


def _signed(applied: _Applied, messages: list[dict[str, Any]], incoming: _Incoming) -> SignedAnswer:
    messages = for_peer(messages, features_of(incoming.headers.get(FEATURES_HEADER)))
    if applied.received:
        messages.append(AckMessage.new(ids=applied.received).wire())
    content = json.dumps(envelope(messages), separators=(",", ":")).encode()
    answer_headers = httpx.Headers({"content-type": CONTENT_TYPE})
    answer_headers[FEATURES_HEADER] = ",".join(sorted(FEATURES))
    signing.sign_response(
        applied.private_key,
        200,
        answer_headers,
        content,
        request_method=incoming.method,
        request_url=incoming.url,
    )
    return SignedAnswer(content, answer_headers)


async def answer_exchange(
    store: Store,
    settings: ServerSettings,
    workspace_slug: str,
    name: str,
    *,
    method: str,
    url: str,
    headers: httpx.Headers,
    body: bytes,
    client: str | None = None,
    stopping: threading.Event | None = None,
) -> SignedAnswer:
    """Authenticate and apply one exchange and build the signed answer (may long-poll).

    The store work runs in short thread hops; a long poll waits on the event loop for a
    notification that concerns this link and holds no thread. ``stopping`` ends a long
    poll early when the server shuts down.
    """
    incoming = _Incoming(workspace_slug, name, method, url, headers, body, client)
    known = _LINK_IDS.get((workspace_slug, name))
    limiter = exchange_limiter(store.dialect)
    may_hold = HELD_ANSWER in features_of(headers.get(FEATURES_HEADER))
    # Its held poll skips the looks the start this exchange may carry wakes (see _Flights).
    holding = known[0] if may_hold and known else None
    if holding is not None:
        _FLIGHTS.begin(holding)
    signed: list[SignedAnswer] = []
    try:
        # Registered before the transaction looks for messages, so that look is the first of
        # the long poll: a poll that is renewed costs one write and no extra read.
        interests = news_interests(*known, True) if known else {}
        with store.notifier.waiter(interests) as waiter:
            applied = await to_thread.run_sync(
                _apply, store, settings, incoming, stopping, may_hold, limiter=limiter
            )
            ids = (applied.config_id, applied.workspace_id)
            _LINK_IDS[(workspace_slug, name)] = ids
            if not applied.held and holding is not None:
                holding = None
                _FLIGHTS.end(ids[0], store.notifier, carried=bool(applied.messages))
            elif applied.held and holding is None:
                holding = ids[0]
                _FLIGHTS.begin(holding)
            if applied.answer is not None:
                return applied.answer
            incoming = incoming.answered()  # the poll may be held for minutes: keep less
            del headers, body
            if applied.held:
                await _held(store, applied, incoming, signed, limiter, stopping)
                return signed[-1]
            first = News([], applied.follows, again=applied.again) if known == ids else None
            messages = await wait_for_news(
                store,
                applied.config_id,
                applied.workspace_id,
                applied.poll,
                stopping=stopping.is_set if stopping is not None else lambda: False,
                limit=MAX_MESSAGES - 1,
                waiter=waiter,
                first=first,
                limiter=limiter,
                look=lambda: _look(store, applied, incoming, signed),
                skip=lambda: _FLIGHTS.held(applied.config_id, waiter.woken_at),
            )
    finally:
        if holding is not None:
            _FLIGHTS.end(holding, store.notifier, carried=bool(signed))
    if signed and messages:
        return signed[-1]
    if messages or applied.received:
        return await to_thread.run_sync(_signed, applied, messages, incoming, limiter=limiter)
    return await _empty_answer(applied, incoming, limiter)


async def _held(
    store: Store,
    applied: _Applied,
    incoming: _Incoming,
    signed: list[SignedAnswer],
    limiter: CapacityLimiter,
    stopping: threading.Event | None,
) -> None:
    """Wait for the end of the runs an exchange started, ``ANSWER_HOLD`` at most, and sign
    the answer with this end's messages then (into ``signed``). A run still going then is
    reported by this last look if its grace is over, else by the held poll.

    Only their ends wake it: a look per ending transaction and one at the end of the hold.
    """
    deadline = time.monotonic() + applied.poll
    with store.notifier.waiter({notify.ENDED: set(applied.started)}) as waiter:
        while not signed:
            remaining = deadline - time.monotonic()
            stop = stopping is not None and stopping.is_set()
            woken = await waiter.wait(remaining) if remaining > 0 and not stop else set()
            await to_thread.run_sync(
                _look, store, applied, incoming, signed, not woken, limiter=limiter
            )


def _look(
    store: Store,
    applied: _Applied,
    incoming: _Incoming,
    signed: list[SignedAnswer],
    last: bool = False,
) -> News:
    """One look of a waiting answer, in a thread hop; an answer with news (or the ``last``
    look of a held answer, then with the acks alone) is signed in it.

    A held answer marks what it carries as in flight; a held poll leaves out what such
    answers carry (and skips its looks while one is held: ``_Flights.held``).
    """
    config_id = applied.config_id
    if applied.held:
        _FLIGHTS.looking(config_id)
        news = look_for_news(store, config_id, MAX_MESSAGES - 1)
        _FLIGHTS.sent(config_id, news.messages)
    else:
        news = _FLIGHTS.unsent(config_id, look_for_news(store, config_id, MAX_MESSAGES - 1))
    if news.messages or (last and applied.held):
        signed.append(_signed(applied, list(news.messages), incoming))
    return news


async def _empty_answer(
    applied: _Applied, incoming: _Incoming, limiter: CapacityLimiter
) -> SignedAnswer:
    """The signed empty answer of a poll that ran out: reused while it is fresh."""
    request = (incoming.method, incoming.url, incoming.headers.get(FEATURES_HEADER) or "")
    now = time.monotonic()
    cached = _EMPTY_ANSWERS.get(applied.config_id)
    if (
        cached is not None
        and now - cached.signed_at < EMPTY_ANSWER_REUSE_SECONDS
        and cached.private_key is applied.private_key  # a changed key signs afresh
        and cached.request == request
    ):
        return cached.answer()
    answer = await to_thread.run_sync(_signed, applied, [], incoming, limiter=limiter)
    if len(_EMPTY_ANSWERS) >= _EMPTY_CACHE_SIZE:
        _EMPTY_ANSWERS.clear()
    headers = tuple(answer.headers.items())
    _EMPTY_ANSWERS[applied.config_id] = _EmptyAnswer(
        now, applied.private_key, request, answer.content, headers
    )
    return answer
