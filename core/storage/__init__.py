"""Where uploaded and processed files are kept: one interface (base.py), a module per backend
(local.py, nats.py, s3.py), and `make_storage` to pick the configured one. Callers import from here."""

from __future__ import annotations

from config import Settings
from core.storage.base import (
    NOT_READY,
    STORAGE_UNAVAILABLE,
    TEMP_PREFIX,
    Area,
    Folders,
    Storage,
    StorageUnavailable,
    StoredFileMissing,
    StoredObject,
    is_stored_name,
    new_stored_name,
    output_name_for,
    remove_quietly,
    sync_path,
)
from core.storage.local import LocalStorage, move_into_place, place_output, rename_durably

__all__ = [
    "NOT_READY",
    "STORAGE_UNAVAILABLE",
    "TEMP_PREFIX",
    "Area",
    "Folders",
    "LocalStorage",
    "Storage",
    "StorageUnavailable",
    "StoredFileMissing",
    "StoredObject",
    "is_stored_name",
    "make_storage",
    "move_into_place",
    "new_stored_name",
    "output_name_for",
    "place_output",
    "remove_quietly",
    "rename_durably",
    "sync_path",
]


def make_storage(settings: Settings, *, client_name: str) -> Storage:
    """The configured backend; `client_name` names its NATS connection (nats backend)."""
    folders = Folders(settings.uploads_dir, settings.processed_dir)
    if settings.storage_backend == "local":
        return LocalStorage(folders)
    # Imported here: render processes import this package (names, folders) and need neither the
    # NATS or S3 client nor the queue's models.
    if settings.storage_backend == "s3":
        from core.storage.s3 import S3Storage

        return S3Storage(
            folders,
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            part_size=settings.s3_part_size_bytes,
        )
    from core.storage.nats import NatsStorage

    return NatsStorage(folders, settings.nats_url, replicas=settings.stream_replicas, client_name=client_name)
