"""the processing a task asked for (presets, ops, several outputs) and what it produced

Revision ID: 8f3a2c4d6e10
Revises: 5c1e0b7d2a90
Create Date: 2026-11-28 11:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "8f3a2c4d6e10"
down_revision: str | None = "5c1e0b7d2a90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL on rows from before this revision: they get the `default` preset, as they always did.
    op.add_column("image_tasks", sa.Column("processing", postgresql.JSONB(), nullable=True))
    op.add_column("image_tasks", sa.Column("outputs", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("image_tasks", "outputs")
    op.drop_column("image_tasks", "processing")
