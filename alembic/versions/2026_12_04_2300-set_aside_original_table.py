"""set aside the original design's `image_tasks` so ours can be built beside it

Revision ID: 0a7c4e2f9b13
Revises: 33d3e37439e0
Create Date: 2026-12-04 23:00:00

At this point of the chain an `image_tasks` table can only be the original design's (see
33d3e37439e0): ours is made by the next revision. Its table, sequence, key and index are renamed
out of the way, their contents untouched; 9e4b1d7c2a58 moves the rows into our table once it is
complete, and drops these. On a fresh database there is nothing to rename.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0a7c4e2f9b13"
down_revision: str | None = "33d3e37439e0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every name the original migration gave (the key and the sequence got PostgreSQL's defaults).
_RENAMES = (
    ("TABLE", "image_tasks", "image_tasks_original"),
    ("SEQUENCE", "image_tasks_id_seq", "image_tasks_original_id_seq"),
    ("INDEX", "image_tasks_pkey", "image_tasks_original_pkey"),
    ("INDEX", "ix_image_tasks_id", "ix_image_tasks_original_id"),
)


def _has_table(name: str) -> bool:
    return bool(op.get_bind().scalar(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}))


def upgrade() -> None:
    if op.get_context().as_sql or not _has_table("image_tasks"):
        return
    for kind, name, aside in _RENAMES:
        op.execute(f"ALTER {kind} {name} RENAME TO {aside}")


def downgrade() -> None:
    # Back below our first revision: an original table still set aside (9e4b1d7c2a58 not reached)
    # gets its names back, so the database is the original design's again.
    if op.get_context().as_sql or not _has_table("image_tasks_original"):
        return
    for kind, name, aside in reversed(_RENAMES):
        op.execute(f"ALTER {kind} {aside} RENAME TO {name}")
