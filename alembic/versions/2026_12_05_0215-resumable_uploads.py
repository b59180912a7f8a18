"""resumable uploads: the state of tus uploads at /files/ (their bytes are stored objects)

Revision ID: 5b8d2e6f1a37
Revises: 5b8d2e4f6a13
Create Date: 2026-12-05 02:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "5b8d2e6f1a37"
down_revision = "5b8d2e4f6a13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resumable_uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("metadata_header", sa.Text(), nullable=False, server_default=""),
        sa.Column("fields", postgresql.JSONB(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("pieces", postgresql.ARRAY(sa.String(64)), nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "received >= 0 AND received <= length", name=op.f("ck_resumable_uploads_received_within_length")
        ),
    )
    op.create_index(op.f("ix_resumable_uploads_owner"), "resumable_uploads", ["owner"])
    op.create_index(op.f("ix_resumable_uploads_expires_at"), "resumable_uploads", ["expires_at"])


def downgrade() -> None:
    op.drop_table("resumable_uploads")
