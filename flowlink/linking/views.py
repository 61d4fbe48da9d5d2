"""Response models of sync configs (one end of a workspace link)."""

from __future__ import annotations

from pydantic import Field

from flowlink.timestamps import Timestamp
from flowlink.views import View


class LinkState(View):
    """The link's connection as this end last saw it."""

    connected: bool | None = None
    since: Timestamp | None = Field(None, description="When it last connected or disconnected")
    last_error: str | None = None
    reason: str | None = None
    last_exchange_at: Timestamp | None = None


class SyncConfigView(View):
    """A sync config: every field but the keys, which show as fingerprints."""

    name: str
    enabled: bool
    remote_url: str | None
    ca_certificate: str | None
    verify_ssl: bool
    own_public_key_fingerprint: str | None
    own_private_key_source: str | None
    remote_public_key_fingerprints: list[str]
    send_all_executions: bool
    send_all_executions_meaning: str
    sync_interval: float | None
    direction: str
    role: str
    connects: bool
    sync_endpoint: str
    state: LinkState
    outbox_depth: int
    warnings: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class SyncConfigList(View):
    """The sync configs of a workspace."""

    items: list[SyncConfigView]


SYNC_ENVELOPE_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "properties": {"messages": {"type": "array", "items": {"type": "object"}}},
    "description": "The link protocol's message envelope (its field names are the protocol's)",
}
"""The body of a sync exchange (docs/linking.md), signed in its headers."""
