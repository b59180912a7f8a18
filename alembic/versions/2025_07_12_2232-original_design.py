"""the original design's schema: where a database made by it stands (its revision id, kept)

Revision ID: 33d3e37439e0
Revises:
Create Date: 2025-07-12 22:32:04

The design this project grew from shipped one migration with this id: an enum `taskstatus` (pending,
processing, done), a table `image_tasks(id, filename, status, upload_time)` and an index
`ix_image_tasks_id`. Its databases carry this id in `alembic_version`, so it is the base of our
chain too; that is all it is for. A database made by that design already stands here (this
revision never runs on it); on any other database this revision does nothing, and ours is built
from the next ones exactly as before:

    33d3e37439e0 (here: nothing)
      -> 0a7c4e2f9b13 (an original `image_tasks` is set aside as `image_tasks_original`)
      -> b6686bcfaf70 ... 6b2d8e4f1a37 (our schema, as it always was built)
      -> 9e4b1d7c2a58 (the set-aside rows and their files adopted into ours; the old table dropped)

A database already at one of our revisions is past all of this and is not touched by it.
"""

from collections.abc import Sequence

revision: str = "33d3e37439e0"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
