"""The storage interface, and how stored files are named and where temporary files go.

Every stored name is generated here (a random hex id plus the extension of the format sniffed from
the bytes); a client's file name never becomes part of a path or an object key.

Two backends behind one interface (`Storage`), chosen by STORAGE_BACKEND (see core.storage):

- `local` (core.storage.local.LocalStorage): files in UPLOADS_DIR and PROCESSED_DIR, which every API
  and worker must share (one host, or a shared filesystem). A file appears under its final name only
  when complete: writers fill a hidden temporary file in the same folder, then rename it durably.
- `nats` (core.storage.nats.NatsStorage): JetStream object store buckets, so processes on any host
  need nothing beyond NATS. The folders are then scratch space for temporary files only.

Either way Pillow works on local files: the API streams an upload to a temporary file before it is
kept, and the worker renders from a local file into temporary files. With the local backend those
are the stored files themselves (no copy); with `nats` the input is fetched into a temporary file
and each output is stored from its own.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# What a generated name looks like; anything else asked for by URL is refused before touching disk.
# An output other than a task's first carries its position: `<input id>-<n>.<ext>`; one made by
# the g-th reprocess of a task carries its generation first: `<input id>-g<g>[-<n>].<ext>`.
STORED_NAME = re.compile(r"^[0-9a-f]{32}(-g[1-9][0-9]{0,8})?(-[1-9][0-9]?)?\.[a-z]{3,4}$")
TEMP_PREFIX = ".partial-"
STORAGE_UNAVAILABLE = "The file store is unavailable; nothing was stored. Please try again shortly."
NOT_READY = "the file store is not connected"


class Area(enum.Enum):
    """What a stored file is: an upload as received, a worker's output, or a piece of a resumable
    upload still coming in (api/routes/resumable.py: one stored object per PATCH)."""

    UPLOADS = "uploads"
    PROCESSED = "processed"
    RESUMABLE = "resumable"


class StorageUnavailable(Exception):
    """The backend cannot be reached now (NATS down, a leader election outlasting our patience):
    a passing fault, to be retried later; nothing was stored."""


class StoredFileMissing(FileNotFoundError):
    """No stored file of that name (never stored, deleted, or removed by retention)."""


@dataclass(frozen=True)
class StoredObject:
    """A stored file read as a stream, for a backend without local paths: `size` bytes in order.
    `read(start, length)`, where the backend can, streams just that range (else ranges are cut
    from `chunks`); `etag` is quoted, as the header carries it."""

    size: int
    chunks: AsyncIterator[bytes]
    etag: str | None = None
    last_modified: datetime | None = None
    read: Callable[[int, int], AsyncIterator[bytes]] | None = None


@dataclass(frozen=True)
class Folders:
    """UPLOADS_DIR and PROCESSED_DIR: the stored files themselves for the local backend, scratch
    space for temporary files for every backend. Pickles, for render processes."""

    uploads_dir: Path
    processed_dir: Path

    def ensure_dirs(self) -> None:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.processed_dir.mkdir(parents=True, exist_ok=True)

    @property
    def resumable_dir(self) -> Path:
        # Inside UPLOADS_DIR: the same filesystem as the temporary files renamed into it. Made by
        # the local backend when it first keeps a piece; other backends use the folders as scratch.
        return self.uploads_dir / "resumable"

    def folder(self, area: Area) -> Path:
        if area is Area.RESUMABLE:
            return self.resumable_dir
        return self.uploads_dir if area is Area.UPLOADS else self.processed_dir

    def upload_path(self, name: str) -> Path:
        return self.uploads_dir / _checked(name)

    def processed_path(self, name: str) -> Path:
        return self.processed_dir / _checked(name)

    def path(self, area: Area, name: str) -> Path:
        return self.folder(area) / _checked(name)

    def temp_upload_path(self) -> Path:
        return self.uploads_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"

    def temp_processed_path(self) -> Path:
        return self.processed_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"

    def stored_before(self, area: Area, older_than_seconds: float, limit: int) -> list[str]:
        """Stored names in `area`'s folder last written more than that long ago, at most `limit`."""
        cutoff = time.time() - older_than_seconds
        found: list[str] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder(area)) as entries:
            for entry in entries:
                if len(found) >= limit:
                    break
                if not is_stored_name(entry.name):  # temporary files are remove_stale_partials'
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        found.append(entry.name)
        return found

    def remove_stale_partials(self, older_than_seconds: float) -> int:
        """Delete temporary files a killed process left behind; live writers finish long before."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for folder in (self.uploads_dir, self.processed_dir):
            for path in folder.glob(f"{TEMP_PREFIX}*"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed


class Storage(abc.ABC):
    """Keeping, finding, reading and removing stored files, whatever the backend.

    Writers hand over a complete temporary file of `folders`; readers see a stored file whole or
    not at all. Calls that need the backend raise StorageUnavailable while it cannot be reached.
    """

    def __init__(self, folders: Folders) -> None:
        self.folders = folders

    # Life cycle: the local backend has nothing to connect to.
    async def connect(self, stop: asyncio.Event) -> None:  # noqa: B027
        """Wait until the backend is usable (or `stop` is set). Raises QueueMisconfigured when the
        backend refuses our set-up, which no retry will fix."""

    def start_in_background(self) -> None:  # noqa: B027
        """Connect without holding up start-up; `is_ready` and `problem` tell how it goes."""

    async def close(self) -> None:  # noqa: B027
        pass

    @property
    def is_ready(self) -> bool:
        return True

    @property
    def problem(self) -> str | None:
        """Why the backend is not usable beyond being unreachable (for /ready); None if nothing known."""
        return None

    @abc.abstractmethod
    async def keep_upload(self, temp: Path, name: str) -> None:
        """Store an upload's temporary file under `name`, durably: once this returns, the file
        survives a crash (the backend syncs what it needs to; the caller need not sync `temp`).
        The temporary file is gone afterwards."""

    @abc.abstractmethod
    async def keep(self, area: Area, temp: Path, name: str) -> None:
        """Store a temporary file under `name` in any area, durably as keep_upload does, replacing
        any earlier one; the temporary file is gone afterwards."""

    @abc.abstractmethod
    async def keep_output(self, temp: Path, name: str) -> None:
        """Store a rendered output's temporary file under `name`, replacing any earlier one (a re-run
        after a crash); the temporary file is gone afterwards."""

    def output_placer(self) -> Callable[[Path, str], None] | None:
        """Where outputs are plain files: a function that stores one (as keep_output does) from
        any thread or render process, so the renderer puts its outputs in place itself instead of
        handing them back for another thread hop each. None: use keep_output."""
        return None

    @contextlib.asynccontextmanager
    async def _written_to_temp(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[Path]:
        """A stored object's chunks in a temporary upload file, for as long as the context lasts
        (local_upload_path of a backend without local files)."""
        temp = self.folders.temp_upload_path()
        try:
            # Page-cache writes of one chunk at a time cost less than handing each to a thread.
            with open(temp, "wb") as target:  # noqa: ASYNC230
                async for chunk in chunks:
                    target.write(chunk)
            yield temp
        finally:
            remove_quietly(temp)

    @abc.abstractmethod
    def local_upload_path(self, name: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A local file holding the stored upload, for as long as the context lasts (for Pillow).
        Raises StoredFileMissing when there is none."""

    @abc.abstractmethod
    async def find(self, area: Area, name: str) -> Path | StoredObject | None:
        """A stored file for serving: a local path, or an object to stream; None when missing."""

    @abc.abstractmethod
    async def remove(self, area: Area, names: list[str]) -> None:
        """Delete stored files; a missing one is not an error."""

    async def download_url(
        self, area: Area, name: str, *, expires_seconds: int, content_type: str | None = None
    ) -> str | None:
        """A short-lived URL that fetches the stored file without passing through us, where the
        backend can make one (s3); None: serve the bytes ourselves."""
        return None

    @abc.abstractmethod
    async def remove_stale(self, older_than_seconds: float) -> int:
        """Delete what writers killed mid-write left behind, older than that; returns how many."""

    @abc.abstractmethod
    async def stored_before(self, area: Area, older_than_seconds: float, *, limit: int) -> list[str]:
        """Up to `limit` names of files in `area` stored more than that long ago: for a sweep of
        what no row names any more (core.resumable.remove_orphan_pieces)."""


def new_stored_name(extension: str) -> str:
    return f"{uuid.uuid4().hex}{extension}"


def output_name_for(input_name: str, extension: str, index: int = 0, generation: int = 0) -> str:
    """The `index`-th output's file name: derived from the input's, so a re-run overwrites, never
    adds. The first output has no suffix (the name it had before tasks had several outputs).
    A reprocess (`generation` 1, 2, ...) names its outputs apart, so the ones still served are
    never overwritten before the switch (core/reprocessing.py)."""
    made_by = f"-g{generation}" if generation else ""
    suffix = f"-{index}" if index else ""
    return f"{Path(_checked(input_name)).stem}{made_by}{suffix}{extension}"


def is_stored_name(name: str) -> bool:
    return bool(STORED_NAME.fullmatch(name))


def sync_path(path: Path, *, folder: bool = False) -> None:
    """fsync a file (or, with `folder`, a folder: its renames) through a bare descriptor: Python's
    buffered open() adds an fstat, an isatty ioctl and a seek, each a system call that also lets go
    of the GIL, which render threads, the batching thread and the event loop contend for."""
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _checked(name: str) -> str:
    if not is_stored_name(name):
        raise ValueError(f"not a generated file name: {name!r}")
    return name
