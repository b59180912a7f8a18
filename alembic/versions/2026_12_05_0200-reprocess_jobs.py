"""reprocess: superseded outputs awaiting removal, and bulk reprocess jobs with their tasks

Revision ID: 5e2a9c71b4d3
Revises: 5d1e8a3c7b90
Create Date: 2026-12-05 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "5e2a9c71b4d3"
down_revision: str | None = "5d1e8a3c7b90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: no row is rewritten; set only while a reprocess's old files await removal.
    op.add_column("image_tasks", sa.Column("superseded_outputs", postgresql.JSONB(), nullable=True))
    op.create_index(
        "ix_image_tasks_superseded",
        "image_tasks",
        ["id"],
        postgresql_where=sa.text("superseded_outputs IS NOT NULL"),
    )
    op.create_table(
        "reprocess_jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True, index=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("filter", postgresql.JSONB(), nullable=False),
        sa.Column("processing", postgresql.JSONB(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('running', 'paused', 'cancelled', 'done')", name="reprocess_job_state_valid"
        ),
    )
    op.create_table(
        "reprocess_job_tasks",
        sa.Column(
            "job_id", sa.Integer(), sa.ForeignKey("reprocess_jobs.id", ondelete="CASCADE"), primary_key=True
        ),
        # No foreign key: a task deleted while its job runs is counted failed, not a broken job.
        sa.Column("task_id", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.CheckConstraint(
            "state IN ('waiting', 'queued', 'done', 'failed', 'skipped')",
            name="reprocess_job_task_state_valid",
        ),
    )
    op.create_index("ix_reprocess_job_tasks_state", "reprocess_job_tasks", ["job_id", "state", "task_id"])


def downgrade() -> None:
    op.drop_table("reprocess_job_tasks")
    op.drop_table("reprocess_jobs")
    op.drop_index("ix_image_tasks_superseded", table_name="image_tasks")
    op.drop_column("image_tasks", "superseded_outputs")
