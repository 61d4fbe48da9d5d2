"""link exchange: outbox, linked executions, remote mirrors kept out of the queue

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("sync_configs") as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=64), nullable=True))
    with op.batch_alter_table("executions") as batch_op:
        batch_op.add_column(sa.Column("remote_config_id", sa.String(length=36), nullable=True))
        batch_op.drop_index("ix_executions_queue")
        batch_op.create_index(
            "ix_executions_queue", ["status", "remote_config_id", "depth", "created_at"]
        )
    op.create_table(
        "link_outbox",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("sync_config_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("body", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sync_config_id"], ["sync_configs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index("ix_link_outbox_config", "link_outbox", ["sync_config_id", "id"])
    op.create_table(
        "link_executions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("sync_config_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("execution_id", sa.String(length=36), nullable=False),
        sa.Column("origin_execution_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("log_mark", BIG_ID, nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sync_config_id"], ["sync_configs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sync_config_id", "role", "origin_execution_id", name="uq_link_exec"),
    )
    op.create_index("ix_link_executions_open", "link_executions", ["sync_config_id", "done"])
    op.create_index("ix_link_executions_execution", "link_executions", ["execution_id"])


def downgrade() -> None:
    op.drop_index("ix_link_executions_execution", table_name="link_executions")
    op.drop_index("ix_link_executions_open", table_name="link_executions")
    op.drop_table("link_executions")
    op.drop_index("ix_link_outbox_config", table_name="link_outbox")
    op.drop_table("link_outbox")
    with op.batch_alter_table("executions") as batch_op:
        batch_op.drop_index("ix_executions_queue")
        batch_op.create_index("ix_executions_queue", ["status", "depth", "created_at"])
        batch_op.drop_column("remote_config_id")
    with op.batch_alter_table("sync_configs") as batch_op:
        batch_op.drop_column("role")
