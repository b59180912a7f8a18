"""The `local` storage backend: stored files are files in UPLOADS_DIR and PROCESSED_DIR, put in
place by a durable rename (the temporary file synced, renamed in its own folder, the folder synced),
so a file appears under its final name only when complete, and stays after a crash."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio.to_thread

from core.storage.base import (
    Area,
    Folders,
    Storage,
    StoredFileMissing,
    StoredObject,
    remove_quietly,
    sync_path,
)
from core.storage.group_sync import GroupSync


class LocalStorage(Storage):
    """Stored files are files in the two folders, which every API and worker process must share."""

    def __init__(self, folders: Folders) -> None:
        super().__init__(folders)
        # Off the event loop (the syncs wait for the disk), and batched: see core/storage/group_sync.py.
        self._group_sync = GroupSync()

    async def keep_upload(self, temp: Path, name: str) -> None:
        await self._group_sync.place(temp, self.folders.upload_path(name))

    async def keep(self, area: Area, temp: Path, name: str) -> None:
        # RESUMABLE's folder is made on first use (Folders.resumable_dir).
        await self._group_sync.place(temp, self.folders.path(area, name), make_folder=True)

    async def close(self) -> None:
        self._group_sync.close()

    async def keep_output(self, temp: Path, name: str) -> None:
        await anyio.to_thread.run_sync(place_output, self.folders, temp, name)

    def output_placer(self) -> Callable[[Path, str], None]:
        return functools.partial(place_output, self.folders)  # a partial of a function: it pickles

    @contextlib.asynccontextmanager
    async def local_upload_path(self, name: str) -> AsyncIterator[Path]:
        path = self.folders.upload_path(name)
        # A stat of a local file, on the loop: microseconds, where a thread hop costs 0.1 ms of CPU.
        if not path.is_file():
            raise StoredFileMissing(name)
        yield path

    async def find(self, area: Area, name: str) -> Path | StoredObject | None:
        path = self.folders.path(area, name)
        return path if await anyio.to_thread.run_sync(path.is_file) else None

    async def remove(self, area: Area, names: list[str]) -> None:
        for name in names:
            await anyio.to_thread.run_sync(remove_quietly, self.folders.path(area, name))

    async def remove_stale(self, older_than_seconds: float) -> int:
        return await anyio.to_thread.run_sync(self.folders.remove_stale_partials, older_than_seconds)

    async def stored_before(self, area: Area, older_than_seconds: float, *, limit: int) -> list[str]:
        return await anyio.to_thread.run_sync(self.folders.stored_before, area, older_than_seconds, limit)


def place_output(folders: Folders, temp: Path, name: str) -> None:
    move_into_place(temp, folders.processed_path(name))


def move_into_place(temp: Path, final: Path) -> None:
    """Publish a finished file atomically (same folder, so same filesystem) and durably."""
    sync_path(temp)
    rename_durably(temp, final)


def rename_durably(synced_temp: Path, final: Path) -> None:
    """Rename an already-synced file into place, and sync the folder so the rename survives a crash."""
    os.replace(synced_temp, final)
    sync_path(final.parent, folder=True)
