"""rows from before tasks stored their processing and outputs get them; `processing` becomes required

Revision ID: 6b2d8e4f1a37
Revises: 3d9e7f1a2b45
Create Date: 2026-12-04 20:40:00

Before 8f3a2c4d6e10 every upload got one processing: the watermark text stamped in red at the top
left, same size and format, written to one file named in `output_name`. Such rows kept NULL in the
`processing` and `outputs` columns, and the code carried fallbacks for them. Here they get what the
code now expects of every row, written out once.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from config import get_settings

revision: str = "6b2d8e4f1a37"
down_revision: str | None = "3d9e7f1a2b45"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than taken from core.processing, so this revision does the same thing whatever
# the code becomes: the stored form (Processing.to_json) of the built-in `default` preset (these
# uploads predate PRESETS, so an operator's own `default` never applied to them), as an upload
# without a `preset`, `ops` or `outputs` field gets it, with the operator's watermark text.
_OUTPUT = "image"
_PRESET = "default"
_WATERMARK = {"op": "watermark", "position": "top-left", "color": "red", "opacity": 1.0}

# The old worker wrote the input's own format (an MPO as JPEG), and its file's extension says which.
_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP", ".bmp": "BMP"}


def _legacy_processing(watermark_text: str) -> dict[str, object]:
    """What a row from before presets stood for, as the `processing` column now holds it."""
    ops = [{**_WATERMARK, "text": watermark_text}]
    return {"outputs": [{"name": _OUTPUT, "preset": _PRESET, "ops": ops}]}


def upgrade() -> None:
    # The text the worker would have stamped on these rows today: the one configured now.
    processing = json.dumps(_legacy_processing(get_settings().watermark_text))
    op.execute(
        sa.text(
            "UPDATE image_tasks SET processing = CAST(:processing AS jsonb) WHERE processing IS NULL"
        ).bindparams(processing=processing)
    )
    op.alter_column("image_tasks", "processing", existing_type=postgresql.JSONB(), nullable=False)

    # A finished old row names its one file in `output_name`; the figures the worker now records
    # (pixels, frames, bytes) were never kept, and the output's size is the upload's only when it
    # had no EXIF rotation, so they stay null rather than guessed.
    known = ", ".join(f"('{extension}', '{name}')" for extension, name in _FORMATS.items())
    op.execute(
        f"""
        UPDATE image_tasks AS task SET outputs = jsonb_build_array(jsonb_build_object(
            'name', '{_OUTPUT}', 'file', task.output_name, 'format', known.format,
            'width', NULL, 'height', NULL, 'frames', NULL, 'size_bytes', NULL))
        FROM (VALUES {known}) AS known (extension, format)
        WHERE task.status = 'done' AND task.outputs IS NULL
            AND lower(substring(task.output_name from '\\.[^.]*$')) = known.extension
        """
    )
    if not op.get_context().as_sql:
        left = op.get_bind().scalar(
            sa.text("SELECT count(*) FROM image_tasks WHERE status = 'done' AND outputs IS NULL")
        )
        if left:
            # No worker ever wrote such a row; refuse rather than leave a done task without its files.
            raise RuntimeError(f"{left} done task(s) have neither `outputs` nor a known `output_name`")


def downgrade() -> None:
    # `processing` stays filled in: the previous revision's code reads it as it reads any row. It
    # could not read the backfilled outputs (their null figures), so those go back to NULL; the
    # worker always writes `size_bytes`, which tells them apart.
    op.execute("""UPDATE image_tasks SET outputs = NULL WHERE outputs @> '[{"size_bytes": null}]'""")
    op.alter_column("image_tasks", "processing", existing_type=postgresql.JSONB(), nullable=True)
