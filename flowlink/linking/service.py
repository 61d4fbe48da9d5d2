"""Sync configs: one end of a workspace link each, with write-only keys.

Only organization admins manage them (``authorize(..., "manage", "sync_configs", ...)``).
A private key is stored encrypted with the server's secret key; no view ever returns a key,
only its SHA-256 fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, defer

from flowlink.access.policy import role_exists
from flowlink.access.service import DEFAULT_IDENTITY_ROLE
from flowlink.errors import Conflict, Invalid, NotFound
from flowlink.events.service import note_unheard, record
from flowlink.linking import keys, outbox
from flowlink.store.models import AutomationTrigger, LinkNonce, SyncConfig, Workspace, utcnow
from flowlink.timestamps import format_timestamp, parse_timestamp
from flowlink.workspaces.service import check_name, get_workspace

CONTROLLING = "controlling"
CONTROLLED = "controlled"
DIRECTIONS = (CONTROLLING, CONTROLLED)
MAX_SYNC_INTERVAL = 86_400.0
STATE_WRITE_EVERY = timedelta(seconds=2)
# The answering end writes the stamp of an exchange that changed nothing else at most this
# often: every exchange also records its nonce with the time (``LinkNonce.seen_at``), and the
# view takes the newer of the two. A nonce is remembered for 5 minutes and 10 s or more
# (``inbound.NONCE_MEMORY``), so the stamp is exact while the link exchanges and at most this
# old once it stopped. A renewed long poll thus writes only its nonce.
ANSWERING_STAMP_EVERY = timedelta(minutes=5)
SYNC_PATH_RE = re.compile(
    r"^/(?:.*/)?api/v1/workspaces/(?P<ws>[a-z0-9][a-z0-9-]{1,62})/sync_config/"
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})/sync$"
)
FIELDS = (
    "enabled",
    "remote_url",
    "ca_certificate",
    "verify_ssl",
    "own_private_key",
    "own_private_key_env",
    "own_private_key_file",
    "remote_public_key",
    "send_all_executions",
    "send_all_executions_meaning",
    "sync_interval",
    "direction",
    "role",
)


SEND_ALL_MEANINGS = ("mirror", "list")
"""``mirror``: v8, every execution of the controlling workspace is mirrored to the controlled
one. ``list``: the older meaning, runs started through the link show in the controlling
workspace's executions list only when ``send_all_executions`` is set."""
KEY_SOURCES = ("own_private_key", "own_private_key_env", "own_private_key_file")
# ``own_private_key`` holds the Fernet token of a stored key, or a reference to where the
# server reads it: ``ref:env:<VARIABLE>`` or ``ref:file:<absolute path>`` (never the key).
_REF = "ref:"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def _key_reference(field: str, value: Any) -> str:
    """Check a key reference (the variable or file exists and holds a usable private key)."""
    if field == "own_private_key_env":
        if not isinstance(value, str) or not _ENV_NAME.match(value):
            raise Invalid(
                f"{field}: an environment variable name (letters, digits, '_')",
                details={"field": field},
            )
        return f"{_REF}env:{value}"
    if not isinstance(value, str) or not value.startswith("/"):
        raise Invalid(f"{field}: an absolute path on the server", details={"field": field})
    return f"{_REF}file:{value}"


def _referenced_text(reference: str) -> str:
    """The private key text a reference points at, or ValueError saying what is missing."""
    kind, _, where = reference[len(_REF) :].partition(":")
    if kind == "env":
        text = os.environ.get(where)
        if not text:
            raise ValueError(
                f"own_private_key_env: the environment variable {where} is not set on this server"
            )
        return text
    try:
        return Path(where).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"own_private_key_file: cannot read {where} on this server:"
            f" {getattr(exc, 'strerror', None) or exc}"
        ) from None


def key_source(config: SyncConfig) -> str:
    """Where this end's private key comes from: ``stored``, ``env:NAME`` or ``file:PATH``."""
    stored = config.own_private_key or ""
    return stored[len(_REF) :] if stored.startswith(_REF) else "stored"


def sync_path(workspace_slug: str, name: str) -> str:
    """The path of a config's sync endpoint (the other side's ``remote_url`` ends with it)."""
    return f"/api/v1/workspaces/{workspace_slug}/sync_config/{name}/sync"


def _check_url(url: Any) -> str | None:
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        raise Invalid("remote_url: must be a string", details={"field": "remote_url"})
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(
            "remote_url: must be an http:// or https:// URL with a host",
            details={"field": "remote_url"},
        )
    if not SYNC_PATH_RE.match(parts.path) or parts.query or parts.fragment:
        raise Invalid(
            "remote_url: must be the other side's sync endpoint,"
            " https://HOST/api/v1/workspaces/WORKSPACE/sync_config/NAME/sync",
            details={"field": "remote_url"},
        )
    return url


def _check_ca(text: Any) -> str | None:
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise Invalid("ca_certificate: must be PEM text", details={"field": "ca_certificate"})
    try:
        certificates = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise Invalid(
            "ca_certificate: not a readable PEM certificate", details={"field": "ca_certificate"}
        ) from None
    if not certificates:
        raise Invalid("ca_certificate: no certificate found", details={"field": "ca_certificate"})
    return text


def _check_interval(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(
            "sync_interval: seconds as a number, or null", details={"field": "sync_interval"}
        )
    if not 0 < value <= MAX_SYNC_INTERVAL:
        raise Invalid(
            f"sync_interval: between 0 and {int(MAX_SYNC_INTERVAL)} seconds, or null for"
            " immediate mode",
            details={"field": "sync_interval"},
        )
    return float(value)


def _check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{field}: must be true or false", details={"field": field})
    return value


def _apply(
    config: SyncConfig, workspace: Workspace, data: Mapping[str, Any], secret_key: str
) -> list[str]:
    """Validate and set the given fields; returns the names of those that changed."""
    unknown = sorted(set(data) - set(FIELDS) - {"name"})
    if unknown:
        raise Invalid(f"{unknown[0]}: unknown field", details={"field": unknown[0]})
    changed: list[str] = []
    given = [field for field in KEY_SOURCES if data.get(field) is not None]
    if len(given) > 1:
        raise Invalid(
            f"{given[1]}: give the private key one way: {', '.join(KEY_SOURCES)}",
            details={"field": given[1]},
        )
    if given == ["own_private_key"]:
        private = keys.load_private_key(data["own_private_key"], field="own_private_key")
        config.own_private_key = keys.encrypt_at_rest(secret_key, keys.private_pem(private))
        config.own_fingerprint = keys.fingerprint(private)
        changed.append("own_private_key")
    elif given:
        field = given[0]
        reference = _key_reference(field, data[field])
        try:
            text = _referenced_text(reference)
        except ValueError as exc:
            raise Invalid(str(exc), details={"field": field}) from None
        private = keys.load_private_key(text, field=field)
        config.own_private_key = reference
        config.own_fingerprint = keys.fingerprint(private)
        changed.append("own_private_key")
    if "remote_public_key" in data:
        public = keys.load_public_keys(data["remote_public_key"], field="remote_public_key")
        config.remote_public_key = "".join(keys.public_pem(k) for k in public)
        config.remote_fingerprints = [keys.fingerprint(k) for k in public]
        changed.append("remote_public_key")
    setters = {
        "remote_url": _check_url,
        "ca_certificate": _check_ca,
        "sync_interval": _check_interval,
    }
    for field, check in setters.items():
        if field in data:
            value = check(data[field])
            if getattr(config, field) != value:
                setattr(config, field, value)
                changed.append(field)
    for field in ("enabled", "verify_ssl", "send_all_executions"):
        if field in data:
            value = _check_bool(field, data[field])
            if getattr(config, field) != value:
                setattr(config, field, value)
                changed.append(field)
    if "send_all_executions_meaning" in data:
        meaning = data["send_all_executions_meaning"]
        if meaning not in (None, *SEND_ALL_MEANINGS):
            raise Invalid(
                "send_all_executions_meaning: 'mirror' (default: mirror every execution to the"
                " controlled workspace) or 'list' (list the runs started through the link in"
                " the controlling workspace)",
                details={"field": "send_all_executions_meaning"},
            )
        meaning = None if meaning == "mirror" else meaning
        if config.send_all_executions_meaning != meaning:
            config.send_all_executions_meaning = meaning
            changed.append("send_all_executions_meaning")
    if "direction" in data:
        direction = data["direction"]
        if direction not in (None, *DIRECTIONS):
            raise Invalid(
                "direction: 'controlling', 'controlled' or null (then the end with remote_url"
                " controls)",
                details={"field": "direction"},
            )
        if config.direction != direction:
            config.direction = direction
            changed.append("direction")
    if "role" in data:
        role = data["role"]
        if role is not None and (not isinstance(role, str) or not role_exists(workspace, role)):
            raise Invalid(
                f"role: {role!r} is not a role of workspace {workspace.slug!r} (executions"
                " started through this link run under it)",
                details={"field": "role"},
            )
        if config.role != role:
            config.role = role
            changed.append("role")
    return changed


def direction_of(config: SyncConfig) -> str:
    """Whether this end controls the other (starts executions there) or is controlled."""
    if config.direction:
        return config.direction
    return CONTROLLING if config.remote_url else CONTROLLED


def list_sync_configs(session: Session, workspace: Workspace) -> list[SyncConfig]:
    """A workspace's sync configs, by name."""
    return list(
        session.scalars(
            select(SyncConfig)
            .where(SyncConfig.workspace_id == workspace.id)
            .order_by(SyncConfig.name)
        )
    )


def find_sync_config(session: Session, workspace: Workspace, name: str) -> SyncConfig | None:
    """The sync config with this name, or None."""
    return session.scalar(
        select(SyncConfig).where(SyncConfig.workspace_id == workspace.id, SyncConfig.name == name)
    )


def get_sync_config(session: Session, workspace: Workspace, name: str) -> SyncConfig:
    """The sync config with this name, or NotFound."""
    config = find_sync_config(session, workspace, name)
    if config is None:
        raise NotFound(
            f"sync config {name!r} not found in workspace {workspace.slug!r}",
            details={"workspace": workspace.slug, "sync_config": name},
        )
    return config


def get_link(session: Session, workspace_slug: str, name: str) -> tuple[Workspace, SyncConfig]:
    """A workspace and its sync config by slug and name, in one statement (every exchange
    looks them up); ``NotFound`` naming the one that is missing.

    The statement also tells whether an automation of the workspace listens to events: if
    none does, the events the exchange records (a run's start and end) are dispatched to no
    one without another lookup (``note_unheard``)."""
    found = session.execute(_LINK, {"slug": workspace_slug, "name": name}).first()
    if found is None:
        workspace = get_workspace(session, workspace_slug)
        return workspace, get_sync_config(session, workspace, name)
    workspace, config, heard = found
    if not heard:
        note_unheard(session, workspace.id)
    return workspace, config


_LINK = (
    select(
        Workspace,
        SyncConfig,
        select(AutomationTrigger.id)
        .where(AutomationTrigger.workspace_id == Workspace.id)
        .exists()
        .label("heard"),
    )
    .join(SyncConfig, SyncConfig.workspace_id == Workspace.id)
    .where(Workspace.slug == bindparam("slug"), SyncConfig.name == bindparam("name"))
    # An exchange needs the workspace's id and slug: its documents load when used.
    .options(
        defer(Workspace.description),
        defer(Workspace.config_value),
        defer(Workspace.config_schema),
        defer(Workspace.config_rendered),
        defer(Workspace.spec),
        defer(Workspace.source_text),
    )
)


def create_sync_config(
    session: Session, workspace: Workspace, data: Mapping[str, Any], secret_key: str
) -> SyncConfig:
    """Create one end of a link; both keys are required."""
    name = data.get("name")
    check_name("sync config", name)  # type: ignore[arg-type]
    if not any(data.get(field) for field in KEY_SOURCES):
        raise Invalid(
            "own_private_key: required (or own_private_key_env / own_private_key_file)",
            details={"field": "own_private_key"},
        )
    if not data.get("remote_public_key"):
        raise Invalid("remote_public_key: required", details={"field": "remote_public_key"})
    if find_sync_config(session, workspace, str(name)) is not None:
        raise Conflict(f"sync config {name!r} already exists", details={"field": "name"})
    config = SyncConfig(
        workspace_id=workspace.id,
        name=name,
        enabled=True,
        verify_ssl=True,
        send_all_executions=False,
        remote_fingerprints=[],
        state={},
    )
    _apply(config, workspace, data, secret_key)
    session.add(config)
    session.flush()
    record(session, workspace, "sync.configs.created", _audit(config))
    return config


def update_sync_config(
    session: Session, workspace: Workspace, name: str, data: Mapping[str, Any], secret_key: str
) -> SyncConfig:
    """Change some fields of a sync config (keys are replaced only when given)."""
    config = get_sync_config(session, workspace, name)
    if "name" in data and data["name"] != name:
        raise Invalid("name: a sync config cannot be renamed", details={"field": "name"})
    changed = _apply(config, workspace, data, secret_key)
    if changed:
        config.updated_at = utcnow()
        record(session, workspace, "sync.configs.updated", {**_audit(config), "changed": changed})
    return config


def delete_sync_config(session: Session, workspace: Workspace, name: str) -> None:
    """Delete one end of a link."""
    config = get_sync_config(session, workspace, name)
    record(session, workspace, "sync.configs.deleted", _audit(config))
    session.delete(config)


def _audit(config: SyncConfig) -> dict[str, Any]:
    return {
        "name": config.name,
        "remoteUrl": config.remote_url,
        "ownFingerprint": config.own_fingerprint,
        "remoteFingerprints": list(config.remote_fingerprints),
    }


def note_link_state(
    config: SyncConfig, stamp_every: timedelta = STATE_WRITE_EVERY, **state: Any
) -> bool:
    """Record an exchange (and state such as ``connected``, ``last_error``) on the config.

    Writes only when the state changes or the last stamp is older than ``stamp_every``,
    so a busy link does not rewrite its config on every exchange. Returns whether it wrote.
    """
    current = dict(config.state or {})
    stamp = utcnow()
    try:
        last = parse_timestamp(str(current.get("last_exchange_at")))
    except ValueError:
        last = None
    same = all(current.get(key) == value for key, value in state.items())
    if same and last is not None and stamp - last < stamp_every:
        return False
    current.update(state, last_exchange_at=format_timestamp(stamp))
    config.state = current
    return True


def private_key_of(config: SyncConfig, secret_key: str) -> rsa.RSAPrivateKey:
    """This end's private key, decrypted (once per stored value: decrypting costs more than
    signing), or read from the environment variable or file it references (parsed once per
    content, so a replaced file or variable takes effect)."""
    if config.own_private_key.startswith(_REF):
        return _referenced_key(_referenced_text(config.own_private_key))
    return _private_key(config.own_private_key, secret_key)


@functools.lru_cache(maxsize=64)
def _referenced_key(text: str) -> rsa.RSAPrivateKey:
    return keys.load_private_key(text)


# A stored key, by a digest of its sealed text (the text itself, 2.5 kB, is not kept), and
# by a digest of its content: links that share a key share one parsed key (about 9 kB once
# it has signed), so a controller with one key for a thousand links keeps it once.
_STORED_KEYS: dict[bytes, rsa.RSAPrivateKey] = {}
_KEYS_BY_CONTENT: dict[bytes, rsa.RSAPrivateKey] = {}
_STORED_KEYS_MAX = 4096  # one entry per link: a thousand links fit


def _private_key(encrypted: str, secret_key: str) -> rsa.RSAPrivateKey:
    sealed = hashlib.sha256(f"{secret_key}\0{encrypted}".encode()).digest()
    key = _STORED_KEYS.get(sealed)
    if key is None:
        text = keys.decrypt_at_rest(secret_key, encrypted)
        content = hashlib.sha256(text.strip().encode()).digest()
        key = _KEYS_BY_CONTENT.get(content)
        if key is None:
            # Checked when it was stored: a thousand links start without a thousand checks.
            key = keys.load_private_key(text, checked=True)
        if len(_STORED_KEYS) >= _STORED_KEYS_MAX:
            _STORED_KEYS.clear()
            _KEYS_BY_CONTENT.clear()
        _STORED_KEYS[sealed] = key
        _KEYS_BY_CONTENT[content] = key
    return key


def public_keys_of(config: SyncConfig) -> dict[str, rsa.RSAPublicKey]:
    """The other end's public keys by fingerprint (parsed once per stored value)."""
    return _public_keys(config.remote_public_key)


@functools.lru_cache(maxsize=4096)  # one entry per link: a thousand links fit
def _public_keys(pem: str) -> dict[str, rsa.RSAPublicKey]:
    return {keys.fingerprint(k): k for k in keys.load_public_keys(pem)}


# What a client sees of a link's state; the rest (the send-all mark) stays on the server.
PUBLIC_STATE = ("connected", "since", "last_error", "reason", "last_exchange_at")


def last_nonces_at(session: Session, config_ids: Collection[str]) -> dict[str, datetime]:
    """When the newest remembered nonce of each link was seen (its last answered exchange),
    in one query; links without a nonce are omitted."""
    if not config_ids:
        return {}
    rows = session.execute(
        select(LinkNonce.sync_config_id, func.max(LinkNonce.seen_at))
        .where(LinkNonce.sync_config_id.in_(config_ids))
        .group_by(LinkNonce.sync_config_id)
    )
    return {config_id: seen for config_id, seen in rows if seen is not None}


def _public_state(state: Mapping[str, Any], last_nonce: datetime | None) -> dict[str, Any]:
    """The public keys of a link's state, its times in the one format (a state written by an
    older version has them as ``+00:00`` or in seconds); the last exchange is the newer of the
    written stamp and the newest nonce (see ``ANSWERING_STAMP_EVERY``)."""
    public = {key: value for key, value in state.items() if key in PUBLIC_STATE}
    times = {key: _parsed(public.get(key)) for key in ("since", "last_exchange_at")}
    written = times["last_exchange_at"]
    if last_nonce is not None and (written is None or last_nonce > written):
        times["last_exchange_at"] = last_nonce
    for key, at in times.items():
        if at is not None:
            public[key] = format_timestamp(at)
        elif public.get(key):
            public[key] = None  # written, but not a time
    return public


def _parsed(value: Any) -> datetime | None:
    """A stored time, or None if there is none or it is not one."""
    if not value:
        return None
    try:
        return parse_timestamp(str(value))
    except ValueError:
        return None


def sync_config_view(session: Session, config: SyncConfig, workspace_slug: str) -> dict[str, Any]:
    """The API representation: every field but the keys, which show as fingerprints."""
    return sync_config_views(session, [config], workspace_slug)[0]


def sync_config_views(
    session: Session, configs: Sequence[SyncConfig], workspace_slug: str
) -> list[dict[str, Any]]:
    """``sync_config_view`` of many configs of a workspace, with two queries in all (the
    outbox depths and the newest nonces, each grouped by link)."""
    ids = [config.id for config in configs if config.id]
    depths = outbox.depths_of(session, ids)
    nonces = last_nonces_at(session, ids)
    return [_sync_config_view(c, workspace_slug, depths, nonces) for c in configs]


def _sync_config_view(
    config: SyncConfig,
    workspace_slug: str,
    depths: Mapping[str, int],
    nonces: Mapping[str, datetime],
) -> dict[str, Any]:
    warnings = []
    if config.remote_url and config.remote_url.startswith("https") and not config.verify_ssl:
        warnings.append("TLS certificate verification is off (verify_ssl: false)")
    if config.remote_url and config.remote_url.startswith("http://"):
        warnings.append("remote_url is plain http: messages are signed but not encrypted")
    return {
        "name": config.name,
        "enabled": config.enabled,
        "remote_url": config.remote_url,
        "ca_certificate": config.ca_certificate,
        "verify_ssl": config.verify_ssl,
        "own_public_key_fingerprint": config.own_fingerprint,
        "own_private_key_source": key_source(config),
        "remote_public_key_fingerprints": list(config.remote_fingerprints),
        "send_all_executions": config.send_all_executions,
        "send_all_executions_meaning": config.send_all_executions_meaning or "mirror",
        "sync_interval": config.sync_interval,
        "direction": direction_of(config),
        "role": config.role or DEFAULT_IDENTITY_ROLE,
        "connects": bool(config.remote_url),
        "sync_endpoint": sync_path(workspace_slug, config.name),
        "state": _public_state(config.state or {}, nonces.get(config.id)),
        "outbox_depth": depths.get(config.id, 0),
        "warnings": warnings,
        "created_at": format_timestamp(config.created_at),
        "updated_at": format_timestamp(config.updated_at),
    }
