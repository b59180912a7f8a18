"""The resumable upload row: every statement on `resumable_uploads`, and delete-with-pieces.

The row is the state of a tus upload (core.models.ResumableUpload); its bytes are stored objects in
Area.RESUMABLE, one per PATCH. A PATCH streams its piece into storage first, without holding
anything, then locks the row to add it: two PATCHes racing at one offset both store a piece, one
adds it, the other finds the offset moved (409) and removes its own. So the database connection is
held only for the short update, except by the PATCH that completes the upload (it joins the pieces
under the lock, so no second PATCH can finish it twice).

As in core.tasks, rows go first, committed, then their pieces: a crash between the two leaves
pieces without rows, never rows pointing at nothing. So does an API process killed in a PATCH
between storing its piece and adding it to the row. Such a piece is removed by the sweep once it is
older than TUS_EXPIRY_SECONDS and no row names it (`remove_orphan_pieces`): by then the upload it
was sent for has expired, so nothing can add it any more.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ResumableUpload
from core.storage import Area, Storage, StorageUnavailable

log = logging.getLogger(__name__)

# How many expired uploads one sweep deletes (each a few stored objects to remove).
SWEEP_BATCH = 200


def new_upload_id() -> str:
    return uuid.uuid4().hex


def new_piece_name() -> str:
    # A generated name like every stored file's (core.storage.is_stored_name), with its own extension.
    return f"{uuid.uuid4().hex}.part"


async def count_open(session: AsyncSession, owner: str | None) -> int:
    """Uploads of this owner (None: every caller without a key) not finished and not expired."""
    which = ResumableUpload.owner.is_(None) if owner is None else ResumableUpload.owner == owner
    query = select(func.count()).where(
        which, ResumableUpload.task_id.is_(None), ResumableUpload.expires_at > func.now()
    )
    return (await session.execute(query)).scalar_one()


# The advisory lock class of keyed creations (a two-int lock: apart from core.tasks' one-bigint
# DISPATCH_LOCK_KEY, whatever the key's hash); any constant of ours.
_CREATION_LOCK_CLASS = 0x74757363


async def unstarted_with_key(
    session: AsyncSession, owner: str | None, key: str, length: int, metadata_header: str
) -> ResumableUpload | None:
    """The owner's open upload created with this Idempotency-Key (as stored), this length and this
    metadata, to which no byte has been added: what a creation whose answer was lost made. None
    otherwise. First locks the key until the session's transaction ends, so a creation with it that
    runs at the same moment (any replica) waits for this one's row to be committed, and finds it."""
    await session.execute(select(func.pg_advisory_xact_lock(_CREATION_LOCK_CLASS, func.hashtext(key))))
    which = ResumableUpload.owner.is_(None) if owner is None else ResumableUpload.owner == owner
    query = (
        select(ResumableUpload)
        .where(
            which,
            ResumableUpload.idempotency_key == key,
            ResumableUpload.length == length,
            ResumableUpload.metadata_header == metadata_header,
            ResumableUpload.received == 0,
            ResumableUpload.task_id.is_(None),
            ResumableUpload.expires_at > func.now(),
        )
        .order_by(ResumableUpload.created_at.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def get(session: AsyncSession, upload_id: str) -> ResumableUpload | None:
    return await session.get(ResumableUpload, upload_id)


async def lock(session: AsyncSession, upload_id: str) -> ResumableUpload | None:
    """The row, locked until the session's transaction ends (one PATCH at a time adds a piece)."""
    query = select(ResumableUpload).where(ResumableUpload.id == upload_id).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def expired(session: AsyncSession, upload: ResumableUpload) -> bool:
    """Past its expiry by the database's clock (the one the sweep uses)."""
    now: datetime = (await session.execute(select(func.now()))).scalar_one()
    return upload.expires_at <= now


async def expires_at(session: AsyncSession, after: timedelta) -> datetime:
    return (await session.execute(select(func.now() + after))).scalar_one()


async def delete_upload(session: AsyncSession, storage: Storage, upload_id: str) -> bool:
    """Delete an upload and its pieces (termination); False if there was no such row."""
    result = await session.execute(
        delete(ResumableUpload).where(ResumableUpload.id == upload_id).returning(ResumableUpload.pieces)
    )
    pieces = result.scalars().all()
    await session.commit()
    await remove_pieces(storage, [piece for row in pieces for piece in row])
    return bool(pieces)


async def delete_expired(session: AsyncSession, storage: Storage) -> int:
    """Delete up to SWEEP_BATCH expired uploads (finished or not) and their pieces; how many.
    Rows another process is handling (locked) are skipped."""
    which = (
        select(ResumableUpload.id)
        .where(ResumableUpload.expires_at <= func.now())
        .limit(SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        delete(ResumableUpload).where(ResumableUpload.id.in_(which)).returning(ResumableUpload.pieces)
    )
    rows = result.scalars().all()
    await session.commit()
    await remove_pieces(storage, [piece for row in rows for piece in row])
    return len(rows)


async def remove_orphan_pieces(session: AsyncSession, storage: Storage, older_than: timedelta) -> int:
    """Remove up to SWEEP_BATCH stored pieces older than `older_than` (the uploads' expiry) that no
    row names; how many. A piece a row still names is left for the row's own sweep."""
    old = await storage.stored_before(Area.RESUMABLE, older_than.total_seconds(), limit=SWEEP_BATCH)
    if not old:
        return 0
    named = select(func.unnest(ResumableUpload.pieces)).where(ResumableUpload.pieces.overlap(old))
    kept = set((await session.execute(named)).scalars().all())
    orphans = [name for name in old if name not in kept]
    if orphans:
        log.warning("removing %d piece(s) of resumable uploads that no upload names", len(orphans))
        await remove_pieces(storage, orphans)
    return len(orphans)


async def remove_pieces(storage: Storage, names: Sequence[str]) -> None:
    """Remove stored pieces; a store that cannot be reached leaves them (logged), never fails the
    caller, whose row is already gone or updated."""
    if not names:
        return
    try:
        await storage.remove(Area.RESUMABLE, list(names))
    except StorageUnavailable as exc:
        log.warning("%d piece(s) of resumable uploads could not be removed: %s", len(names), exc)
