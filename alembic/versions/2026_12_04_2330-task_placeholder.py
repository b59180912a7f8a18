"""task placeholder: the ThumbHash, dominant colour and oriented size the worker records on decode

Revision ID: 9c4e1b7d2f58
Revises: d3f5a7c9e1b2
Create Date: 2026-12-04 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "9c4e1b7d2f58"
down_revision: str | None = "d3f5a7c9e1b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row, and older tasks simply have none.
    op.add_column("image_tasks", sa.Column("placeholder", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("image_tasks", "placeholder")
