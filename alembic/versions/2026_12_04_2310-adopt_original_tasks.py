"""the original design's tasks, set aside by 0a7c4e2f9b13, become ours, with their files

Revision ID: 9e4b1d7c2a58
Revises: 6b2d8e4f1a37
Create Date: 2026-12-04 23:10:00

Only a database made by the original design (see 33d3e37439e0) has an `image_tasks_original`
table here; on any other this revision does nothing.

Each row keeps its id, file name (as shown, up to 255 characters), upload time and, where its files
allow, its status. The original kept an upload as UPLOADS_DIR/<client's file name> and its result
as PROCESSED_DIR/<the same name>; our stores hold only generated names (core/storage/base.py), which
is what keeps a client's name out of every path. So each file found there is hard-linked (copied
where links are not possible) under a generated name, and its facts (type, size, pixels, SHA-256)
read from it. The original files stay where they were, for the operator to remove.

- `pending`: queued by the outbox relay, as any row never published (these never had an outbox).
- `processing`: the process that held it is gone, so it is `pending` again, to be processed anew.
- `done` with its result: `done`, the result as its one output. Without its result but with its
  upload: `pending`, to be made again.
- No usable upload (and, for `done`, no result): `failed`, saying so; nothing could render it.

Several rows of one name shared one file in the original (each upload replaced the one before), so
each of them gets a link to the file as it is now.

This needs the original's folders: run it where UPLOADS_DIR and PROCESSED_DIR are those folders
(see the README, "Upgrading from the original design"). When there are rows but not one of their
files is found, it stops rather than fail them all: the folders are most likely not mounted.

Downgrade keeps the rows (they are ours now) and does not bring the old table back.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from PIL import Image

from alembic import op
from config import get_settings

revision: str = "9e4b1d7c2a58"
down_revision: str | None = "6b2d8e4f1a37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here rather than taken from core, so this revision does the same whatever the code
# becomes. The formats our uploads accept, with the extension and type a stored file gets.
_FORMATS = {
    "JPEG": (".jpg", "image/jpeg"),
    "PNG": (".png", "image/png"),
    "GIF": (".gif", "image/gif"),
    "WEBP": (".webp", "image/webp"),
    "BMP": (".bmp", "image/bmp"),
    "AVIF": (".avif", "image/avif"),
    "TIFF": (".tif", "image/tiff"),
}
# (HEIC is left out: the original's Pillow could not open it, so no task of it ever got further.)
# Pillow names a JPEG with several pictures (phone cameras) MPO; it is stored and served as JPEG.
_SAME_AS = {"MPO": "JPEG"}
# What the original's worker stamped on every image, and what ours does for an upload without a
# preset (the `default` preset as Processing.to_json stores it, like 6b2d8e4f1a37's backfill).
_ORIGINAL_TEXT = "AI magic added!"
_OUTPUT = "image"

NO_UPLOAD = (
    "Taken over from the original design without its uploaded file: it was not a readable image in "
    "UPLOADS_DIR when the database was upgraded."
)
NO_FILES_AT_ALL = (
    "None of the {rows} original task(s) has its file in UPLOADS_DIR ({uploads}) or PROCESSED_DIR "
    "({processed}). Run the upgrade with both set to the original design's folders."
)
NOT_LOCAL = (
    "The original design's files are plain files: upgrade with STORAGE_BACKEND=local (it is {backend})."
)


def _processing(text: str) -> dict[str, Any]:
    ops = [{"op": "watermark", "position": "top-left", "color": "red", "opacity": 1.0, "text": text}]
    return {"outputs": [{"name": _OUTPUT, "preset": "default", "ops": ops}]}


# A NamedTuple, not a dataclass: Alembic loads this file outside sys.modules, where dataclasses fail.
class _Image(NamedTuple):
    path: Path
    format: str
    width: int
    height: int
    frames: int
    size_bytes: int
    sha256: str

    @property
    def extension(self) -> str:
        return _FORMATS[self.format][0]

    @property
    def content_type(self) -> str:
        return _FORMATS[self.format][1]


def _read(folder: Path, name: str) -> _Image | None:
    """The image the original kept as `folder`/`name`; None when it is missing or not one we take.
    A name that is not a plain file name (the original joined whatever the client sent) is not
    looked for: it could point anywhere."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return None
    path = folder / name
    try:
        with Image.open(path) as image:  # reads the header only
            fmt = _SAME_AS.get(image.format or "", image.format or "")
            if fmt not in _FORMATS:
                return None
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        size = path.stat().st_size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return _Image(path, fmt, width, height, frames, size, digest.hexdigest())


def _place(source: Path, target: Path) -> None:
    """`source` also under `target` (same folder): a hard link, or a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _adopted(row: Any, uploads: Path, processed: Path, watermark_text: str) -> tuple[dict[str, Any], bool]:
    """Our row for an original one, its files placed; and whether any of its files was found."""
    upload = _read(uploads, row.filename)
    result = _read(processed, row.filename) if row.status == "done" else None
    extension = (upload or result).extension if (upload or result) else ".bin"
    input_name = f"{uuid.uuid4().hex}{extension}"
    values: dict[str, Any] = {
        "id": row.id,
        "filename": row.filename[:255],
        "upload_time": row.upload_time,
        "input_name": input_name,
        "error": None,
        "finished_at": None,
        "queued_at": None,
        "output_name": None,
        "outputs": None,
        "processing": json.dumps(_processing(watermark_text)),
    }
    # The upload's facts; without it, those of its result (same pixels and type: the original
    # stamped text on the image and saved it as it came), the size and digest unknown.
    source = upload or result
    values |= {
        "content_type": source.content_type if source else "application/octet-stream",
        "width": source.width if source else 0,
        "height": source.height if source else 0,
        "size_bytes": upload.size_bytes if upload else 0,
        "sha256": upload.sha256 if upload else "0" * 64,
    }
    if upload is not None:
        _place(upload.path, uploads / input_name)
    if result is not None:
        output_name = f"{Path(input_name).stem}{result.extension}"
        _place(result.path, processed / output_name)
        record = {
            "name": _OUTPUT,
            "file": output_name,
            "format": result.format,
            "width": result.width,
            "height": result.height,
            "frames": result.frames,
            "size_bytes": result.size_bytes,
        }
        values |= {
            "status": "done",
            "output_name": output_name,
            "outputs": json.dumps([record]),
            "processing": json.dumps(_processing(_ORIGINAL_TEXT)),
            "finished_at": row.upload_time,
            "queued_at": row.upload_time,
        }
    elif upload is not None:
        values["status"] = "pending"
    else:
        values |= {"status": "failed", "error": NO_UPLOAD, "finished_at": row.upload_time}
    return values, source is not None


_INSERT = sa.text(
    "INSERT INTO image_tasks (id, filename, status, upload_time, error, finished_at, queued_at,"
    " content_type, size_bytes, width, height, sha256, input_name, output_name, processing, outputs)"
    " VALUES (:id, :filename, :status, :upload_time, :error, :finished_at, :queued_at, :content_type,"
    " :size_bytes, :width, :height, :sha256, :input_name, :output_name, CAST(:processing AS jsonb),"
    " CAST(:outputs AS jsonb))"
)


def upgrade() -> None:
    if op.get_context().as_sql:  # the files must be looked at: only online
        return
    bind = op.get_bind()
    if not bind.scalar(sa.text("SELECT to_regclass('image_tasks_original') IS NOT NULL")):
        return
    rows = bind.execute(
        sa.text(
            "SELECT id, filename, status::text AS status, upload_time FROM image_tasks_original ORDER BY id"
        )
    ).all()
    if rows:
        settings = get_settings()
        if settings.storage_backend != "local":
            raise RuntimeError(NOT_LOCAL.format(backend=settings.storage_backend))
        uploads, processed = Path(settings.uploads_dir), Path(settings.processed_dir)
        adopted = [_adopted(row, uploads, processed, settings.watermark_text) for row in rows]
        if not any(found for _, found in adopted):
            raise RuntimeError(NO_FILES_AT_ALL.format(rows=len(rows), uploads=uploads, processed=processed))
        for values, _ in adopted:
            bind.execute(_INSERT, values)
        # New uploads continue after the highest id taken over.
        bind.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('image_tasks', 'id'),"
                " (SELECT max(id) FROM image_tasks))"
            )
        )
    op.drop_table("image_tasks_original")  # with its sequence, key and index
    op.execute("DROP TYPE IF EXISTS taskstatus")


def downgrade() -> None:
    pass
