"""task controls: the final status `cancelled`, a count of retries for the message id, and the
outputs a failed run made (for a retry of its failed outputs only)

Revision ID: 5e2a8c4f7b13
Revises: 5e2a9c71b4d3
Create Date: 2026-12-05 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "5e2a8c4f7b13"
down_revision: str | None = "5e2a9c71b4d3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "status IN ('pending', 'processing', 'done', 'failed')"
_NEW = "status IN ('pending', 'processing', 'done', 'failed', 'cancelled')"


def upgrade() -> None:
    # Dropping and adding a CHECK takes a short exclusive lock and one scan (no rewrite).
    op.drop_constraint(op.f("ck_image_tasks_status_valid"), "image_tasks", type_="check")
    op.create_check_constraint(op.f("ck_image_tasks_status_valid"), "image_tasks", _NEW)
    # A constant default: PostgreSQL stores it in the catalogue, rewriting no row.
    op.add_column("image_tasks", sa.Column("retries", sa.Integer(), server_default="0", nullable=False))
    op.add_column("image_tasks", sa.Column("partial_outputs", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("image_tasks", "partial_outputs")
    op.drop_column("image_tasks", "retries")
    # A cancelled task reads as failed in the older schema (both final, neither has outputs).
    op.execute("UPDATE image_tasks SET status = 'failed' WHERE status = 'cancelled'")
    op.drop_constraint(op.f("ck_image_tasks_status_valid"), "image_tasks", type_="check")
    op.create_check_constraint(op.f("ck_image_tasks_status_valid"), "image_tasks", _OLD)
