"""sync configs: which meaning of "send all executions" a config follows

Revision ID: 0010
Revises: 0009_traceparent
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009_traceparent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_configs") as batch:
        batch.add_column(sa.Column("send_all_executions_meaning", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_configs") as batch:
        batch.drop_column("send_all_executions_meaning")
