"""task owner (API key fingerprint), processing lease, and an index on output_name

Revision ID: 5c1e0b7d2a90
Revises: b6686bcfaf70
Create Date: 2026-11-28 09:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5c1e0b7d2a90"
down_revision: str | None = "b6686bcfaf70"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("image_tasks", sa.Column("owner", sa.String(length=64), nullable=True))
    op.add_column("image_tasks", sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True))
    # Tasks caught mid-processing by the upgrade get a lease that runs out now, so the sweep and the
    # workers can take them over.
    op.execute("UPDATE image_tasks SET leased_until = now() WHERE status = 'processing'")
    op.create_index(op.f("ix_image_tasks_owner"), "image_tasks", ["owner"], unique=False)
    # /processed/{name} looks the task up by its output when API keys are on.
    op.create_index(op.f("ix_image_tasks_output_name"), "image_tasks", ["output_name"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_image_tasks_output_name"), table_name="image_tasks")
    op.drop_index(op.f("ix_image_tasks_owner"), table_name="image_tasks")
    op.drop_column("image_tasks", "leased_until")
    op.drop_column("image_tasks", "owner")
