"""the dispatcher's waiting index keyed on COALESCE(owner, ''), so a pass reads only the queues' heads

Revision ID: 7a3c5e9d1f24
Revises: 4f2a9e6c1d83
Create Date: 2026-12-05 06:00:00

core.tasks walks (priority, key) pairs and each key's oldest waiting tasks with row comparisons
on this index's columns, which no other index of the table can serve, so the planner cannot walk
another one and filter (it did, through every waiting row). The key-less queue's NULL owner would
stop a row comparison; '' stands for it (a key's owner is a 32-digit fingerprint, never '').

On a big table: both statements run CONCURRENTLY (outside a transaction), so uploads and workers
go on writing meanwhile; the build reads the whole table once but indexes only the waiting rows.
An interrupted build leaves an INVALID index, which the next upgrade drops and builds again.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "7a3c5e9d1f24"
down_revision: str | None = "4f2a9e6c1d83"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WAITING = "queued_at IS NULL AND status = 'pending'"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_image_tasks_waiting_heads")
        op.create_index(
            "ix_image_tasks_waiting_heads",
            "image_tasks",
            ["priority", sa.text("COALESCE(owner, '')"), "id"],
            postgresql_where=sa.text(_WAITING),
            postgresql_concurrently=True,
        )
        op.drop_index(
            "ix_image_tasks_waiting", table_name="image_tasks", postgresql_concurrently=True, if_exists=True
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_image_tasks_waiting",
            "image_tasks",
            ["priority", "owner", "id"],
            postgresql_where=sa.text(_WAITING),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(
            "ix_image_tasks_waiting_heads",
            table_name="image_tasks",
            postgresql_concurrently=True,
            if_exists=True,
        )
