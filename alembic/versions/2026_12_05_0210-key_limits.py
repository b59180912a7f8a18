"""key limits: the per-key upload rate cell, and an index on each key's unfinished tasks

Revision ID: 5b8d2e4f6a13
Revises: 9c4e1b7d2f58
Create Date: 2026-12-05 02:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5b8d2e4f6a13"
down_revision: str | None = "9c4e1b7d2f58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_key_rates",
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("tat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_admitted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_api_key_rates")),
        # No WAL (see core.models.KeyRate): a crash forgets where each key's minute stood, nothing more.
        prefixes=["UNLOGGED"],
    )
    op.create_index(
        op.f("ix_image_tasks_owner_unfinished"),
        "image_tasks",
        ["owner"],
        postgresql_where="status IN ('pending', 'processing')",
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_image_tasks_owner_unfinished"), table_name="image_tasks")
    op.drop_table("api_key_rates")
