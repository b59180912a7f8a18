"""an index on the client's file name, for the original design's bookmarks

Revision ID: d3f5a7c9e1b2
Revises: 9e4b1d7c2a58
Create Date: 2026-12-04 23:20:00

`/result/<file name>` and `/processed/<file name>` (the URLs the original design gave out) look up
the newest task of that name; without an index that is a scan of every task.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "d3f5a7c9e1b2"
down_revision: str | None = "9e4b1d7c2a58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_image_tasks_filename"), "image_tasks", ["filename"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_image_tasks_filename"), table_name="image_tasks")
