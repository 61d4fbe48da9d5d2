"""The relational schema of the store (one source of truth for every domain)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JSONType = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    """A fresh random identifier (UUID4, 36 characters)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always stored and returned as timezone-aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store them naive, in UTC, in one format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of all tables."""


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    config_value: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    config_schema: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    config_rendered: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source_text: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Flow(Base):
    __tablename__ = "flows"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    script: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Setting(Base):
    __tablename__ = "settings"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    secret: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WorkspaceFile(Base):
    """A file of a workspace (``files/`` in a workspace folder, ``system.file`` in flows)."""

    __tablename__ = "workspace_files"
    __table_args__ = (UniqueConstraint("workspace_id", "path", name="uq_workspace_files_path"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(512))
    # Deferred: listing files never loads their content.
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Automation(Base):
    __tablename__ = "automations"
    __table_args__ = (UniqueConstraint("workspace_id", "slug"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(128))
    flow_name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AutomationTrigger(Base):
    """One event type an automation listens to: an indexed lookup, not a scan."""

    __tablename__ = "automation_triggers"
    __table_args__ = (Index("ix_automation_triggers_lookup", "workspace_id", "event_type"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    automation_id: Mapped[str] = mapped_column(ForeignKey("automations.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(128))


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    workspace_id: Mapped[str | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    role: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Execution(Base):
    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_queue", "status", "remote_config_id", "depth", "created_at"),
        Index("ix_executions_workspace_created", "workspace_id", "created_at"),
        Index("ix_executions_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    flow_name: Mapped[str] = mapped_column(String(128))
    flow_id: Mapped[str | None] = mapped_column(ForeignKey("flows.id", ondelete="SET NULL"))
    script: Mapped[str] = mapped_column(Text)
    inputs: Mapped[Any] = mapped_column(JSONType, nullable=True)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    message: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error_kind: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("executions.id", ondelete="SET NULL"), index=True
    )
    correlation_id: Mapped[str] = mapped_column(String(64), index=True)
    depth: Mapped[int] = mapped_column(Integer, default=0)
    max_runtime: Mapped[float] = mapped_column(Float)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    user_id: Mapped[str | None] = mapped_column(String(36))
    trigger: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Who the execution acts as (see flowlink.access.service.principal_descriptor).
    principal: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Set on an execution that runs in a linked workspace and only mirrors it here (the id of
    # the sync config it runs through); the queue never claims such an execution.
    remote_config_id: Mapped[str | None] = mapped_column(String(36))
    # Set on an execution of an app instance's flow: {"instance": full slug, "depth", "app",
    # "version", "config"} (see flowlink.apps.service); it keeps them for its whole run.
    app: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # The W3C trace context the execution was queued in (tracing on), its span's parent.
    traceparent: Mapped[str | None] = mapped_column(String(55), nullable=True)


class ExecutionLog(Base):
    __tablename__ = "execution_logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    line: Mapped[str] = mapped_column(Text)


class Event(Base):
    """An immutable record of something that happened in a workspace."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_workspace_seq", "workspace_id", "seq"),
        Index("ix_events_workspace_type_created", "workspace_id", "type", "created_at"),
        Index("ix_events_correlation_seq", "correlation_id", "seq"),  # a story, in order
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    workspace_id: Mapped[str | None] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    size: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    payload: Mapped[Any] = mapped_column(JSONType, nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(64), index=True)


class Membership(Base):
    """A user's role in one workspace (built-in or a custom role of the workspace)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "workspace_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UserSession(Base):
    """A login session of the web UI (the cookie holds the secret; the store its hash)."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AutomationKey(Base):
    """The hashed key that authenticates calls to an automation's webhook."""

    __tablename__ = "automation_keys"

    automation_id: Mapped[str] = mapped_column(
        ForeignKey("automations.id", ondelete="CASCADE"), primary_key=True
    )
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ScheduleSlot(Base):
    """One fired cron slot of an automation; the unique pair makes a slot fire exactly once."""

    __tablename__ = "schedule_slots"
    __table_args__ = (
        UniqueConstraint("automation_id", "slot", name="uq_schedule_slots_automation_slot"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    automation_id: Mapped[str] = mapped_column(ForeignKey("automations.id", ondelete="CASCADE"))
    slot: Mapped[datetime] = mapped_column(UTCDateTime())
    execution_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SyncConfig(Base):
    """One end of a workspace link (docs/linking.md). Keys are write-only."""

    __tablename__ = "sync_configs"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_sync_configs_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    remote_url: Mapped[str | None] = mapped_column(String(2048))
    ca_certificate: Mapped[str | None] = mapped_column(Text)
    verify_ssl: Mapped[bool] = mapped_column(Boolean, default=True)
    own_private_key: Mapped[str] = mapped_column(Text)  # encrypted with the server's secret key
    own_fingerprint: Mapped[str] = mapped_column(String(64))
    remote_public_key: Mapped[str] = mapped_column(Text)  # one or two SPKI PEM keys
    remote_fingerprints: Mapped[list[str]] = mapped_column(JSONType, default=list)
    send_all_executions: Mapped[bool] = mapped_column(Boolean, default=False)
    # "mirror" (None: the default, Workspace Linking v8) or "list" (the older meaning).
    send_all_executions_meaning: Mapped[str | None] = mapped_column(String(16))
    sync_interval: Mapped[float | None] = mapped_column(Float)
    direction: Mapped[str | None] = mapped_column(String(16))
    # The role executions started through this link run under in this workspace.
    role: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LinkNonce(Base):
    """A signature nonce seen on a link: a second request with it is a replay."""

    __tablename__ = "link_nonces"
    __table_args__ = (
        UniqueConstraint("sync_config_id", "nonce", name="uq_link_nonces"),
        Index("ix_link_nonces_seen", "seen_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sync_config_id: Mapped[str] = mapped_column(ForeignKey("sync_configs.id", ondelete="CASCADE"))
    nonce: Mapped[str] = mapped_column(String(128))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LinkOutbox(Base):
    """A message waiting to be delivered to the other end of a link, until it is acked."""

    __tablename__ = "link_outbox"
    __table_args__ = (Index("ix_link_outbox_config", "sync_config_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sync_config_id: Mapped[str] = mapped_column(ForeignKey("sync_configs.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LinkExecution(Base):
    """An execution that concerns a link, and what the other end has been told about it.

    ``role``: ``origin`` (a local execution that mirrors its run in the other workspace),
    ``target`` (a local run started by the other end), ``source`` (a local execution copied
    read-only to the other end because of ``send_all_executions``) or ``mirror`` (such a
    read-only copy received here). ``origin_execution_id`` is the id in the originating
    workspace, which both ends use to name the execution in messages.
    """

    __tablename__ = "link_executions"
    __table_args__ = (
        UniqueConstraint("sync_config_id", "role", "origin_execution_id", name="uq_link_exec"),
        Index("ix_link_executions_open", "sync_config_id", "done"),
        Index("ix_link_executions_execution", "execution_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sync_config_id: Mapped[str] = mapped_column(ForeignKey("sync_configs.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(8))
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    origin_execution_id: Mapped[str] = mapped_column(String(64))
    # Sender side: the last state put in the outbox. Receiver side: the last one applied.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str | None] = mapped_column(String(16))
    log_mark: Mapped[int] = mapped_column(BigId, default=0)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Page(Base):
    """A page of a workspace: its template and the settings of its ``pages/<slug>.yml``."""

    __tablename__ = "pages"
    __table_args__ = (UniqueConstraint("workspace_id", "slug"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(128))
    template: Mapped[str] = mapped_column(Text)
    meta_text: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CustomDomain(Base):
    """A host name claimed by one workspace to serve its pages (unique across workspaces)."""

    __tablename__ = "custom_domains"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )


class App(Base):
    """An app: a workspace published as immutable versions, installable as instances."""

    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    workspace_id: Mapped[str | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AppVersion(Base):
    """One published version of an app: a snapshot of its workspace (never changed)."""

    __tablename__ = "app_versions"
    __table_args__ = (UniqueConstraint("app_id", "version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSONType)
    published_by: Mapped[str | None] = mapped_column(String(128))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AppInstance(Base):
    """An app version installed into a workspace under a slug, with its own config."""

    __tablename__ = "app_instances"
    __table_args__ = (UniqueConstraint("workspace_id", "slug"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(63))
    app_version_id: Mapped[str] = mapped_column(ForeignKey("app_versions.id"))
    app_slug: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(64))
    config_value: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    config_rendered: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WorkerProcess(Base):
    """A worker process as it last reported itself (registration and heartbeat)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    busy: Mapped[int] = mapped_column(Integer, default=0)
    warm: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_seconds: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
