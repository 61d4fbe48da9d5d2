"""merge the events, access and sync-config branches into one head

Revision ID: 0005
Revises: 0002, 0003, 0004
"""

from collections.abc import Sequence

revision: str = "0005"
down_revision: str | Sequence[str] | None = ("0002", "0003", "0004")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to do: this revision only joins the branches."""


def downgrade() -> None:
    """Nothing to do: this revision only joins the branches."""
