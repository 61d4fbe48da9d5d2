"""The answering side of an exchange: ``POST .../sync_config/{name}/sync``.

Nothing in a request is acted on before its signature holds (``check_exchange``).
Then, in one transaction, its messages are applied and recorded as received. The answer
carries this end's pending messages and an ``ack`` of the request's; with ``poll`` set and
nothing to send, the answer waits (without holding a transaction) until something changes
here or the poll time is up: the long poll of the immediate mode. The wait holds no
thread and no transaction (``exchange.wait_for_news``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import httpx
from anyio import CapacityLimiter, to_thread

from flowlink.errors import Invalid
from flowlink.linking import signing
from flowlink.linking.exchange import (
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
    store: Store, settings: ServerSettings, incoming: _Incoming, stopping: threading.Event | None
) -> _Applied:
    """Authenticate and apply one exchange and collect this end's messages (one write).

    An answer that need not wait is signed here too, after the commit: one thread hop.
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
            received = apply_messages(
                session,
                config,
                workspace,
                request.messages,
                default_max_runtime=settings.default_max_runtime,
            )
            # Its nonce records the exchange's time: the stamp is written rarely.
            note_link_state(
                config, stamp_every=ANSWERING_STAMP_EVERY, connected=True, last_error=None
            )
            # Answer at once when the request carried news or does not poll: in this same
            # transaction, so an exchange costs one write.
            poll = 0.0 if received or (stopping and stopping.is_set()) else (request.poll or 0.0)
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
            )
    except SyncRejected as rejection:
        http = {"method": method, "url": url, "client": incoming.client}
        note_rejection(store, settings.rejection_window, workspace_slug, name, rejection, http)
        raise
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
    # Registered before the transaction looks for messages, so that look is the first of
    # the long poll: a poll that is renewed costs one write and no extra read.
    interests = news_interests(*known, True) if known else {}
    with store.notifier.waiter(interests) as waiter:
        applied = await to_thread.run_sync(
            _apply, store, settings, incoming, stopping, limiter=limiter
        )
        ids = (applied.config_id, applied.workspace_id)
        _LINK_IDS[(workspace_slug, name)] = ids
        if applied.answer is not None:
            return applied.answer
        incoming = incoming.answered()  # the poll may be held for minutes: keep less
        del headers, body
        first = News([], applied.follows) if known == ids else None
        signed: list[SignedAnswer] = []

        def look() -> News:
            # An answer with news is signed in the thread hop of the look that found it.
            news = look_for_news(store, applied.config_id, MAX_MESSAGES - 1)
            if news.messages:
                signed.append(_signed(applied, list(news.messages), incoming))
            return news

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
            look=look,
        )
    if signed and messages:
        return signed[-1]
    if messages or applied.received:
        return await to_thread.run_sync(_signed, applied, messages, incoming, limiter=limiter)
    return await _empty_answer(applied, incoming, limiter)


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
