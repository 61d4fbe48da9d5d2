"""executions.traceparent: the W3C trace context an execution was queued in

Revision ID: 0009_traceparent
Revises: 0008_workers
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_traceparent"
down_revision: str | None = "0008_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch_op:
        batch_op.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch_op:
        batch_op.drop_column("traceparent")
