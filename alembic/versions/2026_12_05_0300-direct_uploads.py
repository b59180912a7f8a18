"""direct uploads: uploads declared by POST /uploads, sent straight to the S3 bucket

Revision ID: 5d1e8a3c7b90
Revises: 5e2a8c1f7b90
Create Date: 2026-12-05 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "5d1e8a3c7b90"
down_revision: str | None = "5e2a8c1f7b90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "direct_uploads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("object_name", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("fields", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("refusal_status", sa.Integer(), nullable=True),
        sa.Column("refusal", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_direct_uploads")),
        sa.UniqueConstraint("object_name", name=op.f("uq_direct_uploads_object_name")),
    )
    op.create_index(op.f("ix_direct_uploads_expires_at"), "direct_uploads", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_direct_uploads_expires_at"), table_name="direct_uploads")
    op.drop_table("direct_uploads")
