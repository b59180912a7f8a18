"""task traceparent: the upload span's W3C trace context, so later spans join the task's trace

Revision ID: 5e2a8c1f7b90
Revises: 5b8d2e6f1a37
Create Date: 2026-12-05 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5e2a8c1f7b90"
down_revision: str | None = "5b8d2e6f1a37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row; tasks uploaded with tracing off have none.
    # 55 characters: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
    op.add_column("image_tasks", sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade() -> None:
    op.drop_column("image_tasks", "traceparent")
