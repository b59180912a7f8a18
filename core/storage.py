"""Where uploaded and processed files live, and how they are named.

Every stored name is generated here (a random hex id plus the extension of the format sniffed from
the bytes); a client's file name never becomes part of a path. Files appear under their final name
only when complete: writers fill a hidden temporary file in the same folder, then rename it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# What a generated name looks like; anything else asked for by URL is refused before touching disk.
# An output other than a task's first carries its position: `<input id>-<n>.<ext>`.
STORED_NAME = re.compile(r"^[0-9a-f]{32}(-[1-9][0-9]?)?\.[a-z]{3,4}$")
_TEMP_PREFIX = ".partial-"


@dataclass(frozen=True)
class Storage:
    uploads_dir: Path
    processed_dir: Path

    def ensure_dirs(self) -> None:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.processed_dir.mkdir(parents=True, exist_ok=True)

    def upload_path(self, name: str) -> Path:
        return self.uploads_dir / _checked(name)

    def processed_path(self, name: str) -> Path:
        return self.processed_dir / _checked(name)

    def temp_upload_path(self) -> Path:
        return self.uploads_dir / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"

    def temp_processed_path(self) -> Path:
        return self.processed_dir / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"

    def remove_stale_partials(self, older_than_seconds: float) -> int:
        """Delete temporary files a killed process left behind; live writers finish long before."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for folder in (self.uploads_dir, self.processed_dir):
            for path in folder.glob(f"{_TEMP_PREFIX}*"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed


def new_stored_name(extension: str) -> str:
    return f"{uuid.uuid4().hex}{extension}"


def output_name_for(input_name: str, extension: str, index: int = 0) -> str:
    """The `index`-th output's file name: derived from the input's, so a re-run overwrites, never
    adds. The first output has no suffix (the name it had before tasks had several outputs)."""
    suffix = f"-{index}" if index else ""
    return f"{Path(_checked(input_name)).stem}{suffix}{extension}"


def is_stored_name(name: str) -> bool:
    return bool(STORED_NAME.fullmatch(name))


def move_into_place(temp: Path, final: Path) -> None:
    """Publish a finished file atomically (same folder, so same filesystem) and durably."""
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    rename_durably(temp, final)


def rename_durably(synced_temp: Path, final: Path) -> None:
    """Rename an already-synced file into place, and sync the folder so the rename survives a crash."""
    os.replace(synced_temp, final)
    folder = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _checked(name: str) -> str:
    if not is_stored_name(name):
        raise ValueError(f"not a generated file name: {name!r}")
    return name
