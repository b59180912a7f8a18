"""task priority: interactive, normal or bulk, and the indexes the dispatcher reads

Revision ID: 4f2a9e6c1d83
Revises: 5e2a8c4f7b13
Create Date: 2026-12-05 02:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "4f2a9e6c1d83"
down_revision: str | None = "5e2a8c4f7b13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL records it in the catalogue and rewrites no row, so existing
    # tasks (queued or waiting) read as `normal` at once.
    op.add_column(
        "image_tasks",
        sa.Column("priority", sa.String(length=16), server_default="normal", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_image_tasks_priority_valid"), "image_tasks", "priority IN ('interactive', 'normal', 'bulk')"
    )
    op.create_index(
        "ix_image_tasks_in_window",
        "image_tasks",
        ["owner"],
        postgresql_where=sa.text("queued_at IS NOT NULL AND status IN ('pending', 'processing')"),
    )
    op.create_index(
        "ix_image_tasks_waiting",
        "image_tasks",
        ["priority", "owner", "id"],
        postgresql_where=sa.text("queued_at IS NULL AND status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_image_tasks_waiting", table_name="image_tasks")
    op.drop_index("ix_image_tasks_in_window", table_name="image_tasks")
    op.drop_constraint(op.f("ck_image_tasks_priority_valid"), "image_tasks", type_="check")
    op.drop_column("image_tasks", "priority")
