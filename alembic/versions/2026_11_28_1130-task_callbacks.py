"""callback URLs: where to POST a task's final status, and the state of that delivery

Revision ID: 3d9e7f1a2b45
Revises: 8f3a2c4d6e10
Create Date: 2026-11-28 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "3d9e7f1a2b45"
down_revision: str | None = "8f3a2c4d6e10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("image_tasks", sa.Column("callback_url", sa.Text(), nullable=True))
    op.add_column("image_tasks", sa.Column("callback_state", sa.String(length=16), nullable=True))
    op.add_column(
        "image_tasks", sa.Column("callback_attempts", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("image_tasks", sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("image_tasks", sa.Column("callback_error", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_image_tasks_callback_state_valid"),
        "image_tasks",
        "callback_state IN ('pending', 'delivered', 'failed')",
    )
    # The sender scans only deliveries still to make: keep that scan small.
    op.create_index(
        "ix_image_tasks_callback_due",
        "image_tasks",
        ["callback_next_at"],
        postgresql_where=sa.text("callback_state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_image_tasks_callback_due", table_name="image_tasks")
    op.drop_constraint(op.f("ck_image_tasks_callback_state_valid"), "image_tasks", type_="check")
    op.drop_column("image_tasks", "callback_error")
    op.drop_column("image_tasks", "callback_next_at")
    op.drop_column("image_tasks", "callback_attempts")
    op.drop_column("image_tasks", "callback_state")
    op.drop_column("image_tasks", "callback_url")
