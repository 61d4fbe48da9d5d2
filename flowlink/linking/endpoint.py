"""The answering side of an exchange: ``POST .../sync_config/{name}/sync``.

Nothing in a request is acted on before its signature holds (``authenticate_exchange``).
Then, in one transaction, its messages are applied and recorded as received. The answer
carries this end's pending messages and an ``ack`` of the request's; with ``poll`` set and
nothing to send, the answer waits (without holding a transaction) until something changes
here or the poll time is up: the long poll of the immediate mode.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from flowlink.errors import Invalid
from flowlink.linking import outbox, signing
from flowlink.linking.exchange import apply_messages, outgoing, pending_messages
from flowlink.linking.inbound import SyncRejected, authenticate_exchange, note_rejection
from flowlink.linking.protocol import (
    FEATURES,
    FEATURES_HEADER,
    MAX_MESSAGES,
    envelope,
    features_of,
    for_peer,
    parse_envelope,
)
from flowlink.linking.service import note_link_state, private_key_of
from flowlink.settings import ServerSettings, resolve_secret_key
from flowlink.store.engine import Store
from flowlink.workspaces.service import get_workspace

CONTENT_TYPE = "application/json"
COALESCE_SECONDS = 0.002  # after a wake-up, let changes made together go out together
RECHECK_SECONDS = 0.25  # a held poll looks again this often (a run's start is sent late)


@dataclass(frozen=True)
class SignedAnswer:
    """The body and headers (signature included) of an exchange's answer."""

    content: bytes
    headers: httpx.Headers


def answer_exchange(
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

    ``stopping`` ends a long poll early when the server shuts down.
    """
    secret = resolve_secret_key(settings)
    try:
        with store.write() as session:
            workspace = get_workspace(session, workspace_slug)
            config = authenticate_exchange(
                session, workspace, name, method=method, url=url, headers=headers, body=body
            )
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
            note_link_state(config, connected=True, last_error=None)
            private_key = private_key_of(config, secret)
            config_id = config.id
            # Answer at once when the request carried news or does not poll: in this same
            # transaction, so an exchange costs one write.
            poll = 0.0 if received or (stopping and stopping.is_set()) else (request.poll or 0.0)
            seen = store.notifier.total()  # before looking: nothing that happens after is missed
            messages = outgoing(session, config, MAX_MESSAGES - 1)
    except SyncRejected as rejection:
        http = {"method": method, "url": url, "client": client}
        note_rejection(store, settings.rejection_window, workspace_slug, name, rejection, http)
        raise
    if not messages and poll > 0:
        messages = _wait_for_news(store, config_id, seen, poll=poll, stopping=stopping)
    messages = for_peer(messages, features_of(headers.get(FEATURES_HEADER)))
    if received:
        messages.append(outbox.new_message("ack", ids=received))
    content = json.dumps(envelope(messages), separators=(",", ":")).encode()
    answer_headers = httpx.Headers({"content-type": CONTENT_TYPE})
    answer_headers[FEATURES_HEADER] = ",".join(sorted(FEATURES))
    signing.sign_response(
        private_key, 200, answer_headers, content, request_method=method, request_url=url
    )
    return SignedAnswer(content, answer_headers)


def _wait_for_news(
    store: Store,
    config_id: str,
    seen: int,
    *,
    poll: float,
    stopping: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Hold a long poll until this end has messages, the poll time is up or the server stops.

    ``seen`` is the notification count taken before this end last looked for messages.
    """
    notifier = store.notifier
    deadline = time.monotonic() + poll
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (stopping is not None and stopping.is_set()):
            return []
        notifier.wait_any(seen, min(remaining, RECHECK_SECONDS))
        time.sleep(COALESCE_SECONDS)
        seen = notifier.total()  # taken before looking, as above
        messages = pending_messages(store, config_id, MAX_MESSAGES - 1)
        if messages:
            return messages
