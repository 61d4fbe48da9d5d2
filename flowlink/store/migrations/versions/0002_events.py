"""events: full-text search, webhook keys, schedule slots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The PostgreSQL full-text document of an event; the search in flowlink/events/service.py
# uses the same text.
PG_DOCUMENT = (
    "to_tsvector('simple'::regconfig, "
    "translate(type || ' ' || coalesce(payload::text, ''), '._-/', '    '))"
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "automation_keys",
        sa.Column("automation_id", sa.String(length=36), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["automation_id"], ["automations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("automation_id"),
    )
    op.create_table(
        "schedule_slots",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("automation_id", sa.String(length=36), nullable=False),
        sa.Column("slot", sa.DateTime(timezone=True), nullable=False),
        sa.Column("execution_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["automation_id"], ["automations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("automation_id", "slot", name="uq_schedule_slots_automation_slot"),
    )
    # "Everything of one correlation, newest first" without a sort or a scan.
    op.create_index("ix_events_correlation_seq", "events", ["correlation_id", "seq"])
    if dialect == "sqlite":
        # External-content FTS5 index over events(type, payload), kept in sync by triggers in the
        # same transaction as every insert and delete.
        op.execute(
            "CREATE VIRTUAL TABLE events_fts USING fts5("
            "type, payload, content='events', content_rowid='seq')"
        )
        op.execute(
            "CREATE TRIGGER events_fts_insert AFTER INSERT ON events BEGIN "
            "INSERT INTO events_fts(rowid, type, payload) "
            "VALUES (new.seq, new.type, new.payload); END"
        )
        op.execute(
            "CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN "
            "INSERT INTO events_fts(events_fts, rowid, type, payload) "
            "VALUES ('delete', old.seq, old.type, old.payload); END"
        )
        op.execute("INSERT INTO events_fts(events_fts) VALUES ('rebuild')")
    elif dialect == "postgresql":
        op.execute(f"CREATE INDEX ix_events_fulltext ON events USING gin (({PG_DOCUMENT}))")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_fts_insert")
        op.execute("DROP TRIGGER IF EXISTS events_fts_delete")
        op.execute("DROP TABLE IF EXISTS events_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_events_fulltext")
    op.drop_index("ix_events_correlation_seq", table_name="events")
    op.drop_table("schedule_slots")
    op.drop_table("automation_keys")
