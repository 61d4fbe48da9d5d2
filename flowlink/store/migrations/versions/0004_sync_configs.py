"""sync configs: one end of a workspace link

Revision ID: 0004
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sync_configs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("workspace_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("remote_url", sa.String(length=2048), nullable=True),
        sa.Column("ca_certificate", sa.Text(), nullable=True),
        sa.Column("verify_ssl", sa.Boolean(), nullable=False),
        sa.Column("own_private_key", sa.Text(), nullable=False),
        sa.Column("own_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("remote_public_key", sa.Text(), nullable=False),
        sa.Column("remote_fingerprints", JSON, nullable=False),
        sa.Column("send_all_executions", sa.Boolean(), nullable=False),
        sa.Column("sync_interval", sa.Float(), nullable=True),
        sa.Column("direction", sa.String(length=16), nullable=True),
        sa.Column("state", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_sync_configs_name"),
    )


def downgrade() -> None:
    op.drop_table("sync_configs")
