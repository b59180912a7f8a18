"""create image_tasks

Revision ID: b6686bcfaf70
Revises: 0a7c4e2f9b13
Create Date: 2026-11-28 08:43:04.902620
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "b6686bcfaf70"
down_revision: str | None = "0a7c4e2f9b13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("upload_time", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("input_name", sa.String(length=64), nullable=False),
        sa.Column("output_name", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'done', 'failed')", name=op.f("ck_image_tasks_status_valid")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_tasks")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_image_tasks_idempotency_key")),
        sa.UniqueConstraint("input_name", name=op.f("uq_image_tasks_input_name")),
    )
    op.create_index(op.f("ix_image_tasks_status"), "image_tasks", ["status"], unique=False)
    op.create_index(
        "ix_image_tasks_unqueued", "image_tasks", ["id"], unique=False, postgresql_where="queued_at IS NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_image_tasks_unqueued", table_name="image_tasks", postgresql_where="queued_at IS NULL")
    op.drop_index(op.f("ix_image_tasks_status"), table_name="image_tasks")
    op.drop_table("image_tasks")
