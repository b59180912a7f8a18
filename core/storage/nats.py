"""The `nats` storage backend: uploads and outputs in two JetStream object store buckets.

nats-py's object store splits an object into 128 KiB chunk messages on a subject of their own (a
fresh id per put), then publishes one meta message (name, size, chunk count, SHA-256) that rolls up
the object's earlier meta. Readers look the meta up first, so an object appears only once it is
whole, and a put cut short (a crash, NATS going away) leaves chunks nobody can see; re-putting a
name swaps the meta and then purges the old chunks, so a re-render replaces its output.

Memory: `put` reads the file one chunk at a time; reading is ours rather than nats-py's `get`
(which gathers the whole object in memory unless given a file): one `STREAM.MSG.GET` per chunk,
asked of the stream leader (a follower might not hold a chunk yet), so a slow HTTP client or disk
holds back the reads instead of piling chunks up in memory, and the digest is checked at the end.

A put cut short leaves chunks that no meta names; the API's sweep purges them once they are older
than LOST_AFTER_SECONDS (longer than any put takes).

Faults: every call needs the connection up; while it is down, or JetStream does not answer (no
leader during an election), calls raise StorageUnavailable. Puts are retried for a while when
NATS is connected but slow to answer, so a leader election does not fail an upload.

The buckets are file-backed streams (`OBJ_imagequeue-uploads`, `OBJ_imagequeue-processed`, and
`OBJ_imagequeue-resumable` for the pieces of resumable uploads still coming in) with
STREAM_REPLICAS replicas, created by whichever process starts first, and scaled up (never down) like
the task stream (core.queue).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DIGEST_TYPE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)

from core import loops, queue
from core.storage.base import (
    NOT_READY,
    Area,
    Folders,
    Storage,
    StorageUnavailable,
    StoredFileMissing,
    StoredObject,
    remove_quietly,
)

log = logging.getLogger(__name__)

BUCKETS = {
    Area.UPLOADS: "imagequeue-uploads",
    Area.PROCESSED: "imagequeue-processed",
    Area.RESUMABLE: "imagequeue-resumable",
}
# How long a put keeps trying while NATS is connected but does not answer (a leader election takes
# 5-10 s on a three-node cluster); an upload's client waits that long at most before a 503.
PUT_PATIENCE_SECONDS = 15.0
PUT_RETRY_SECONDS = 0.5
# Passing faults: no connection, no answer in time, no leader. (Server refusals such as "insufficient
# resources" are APIErrors too, and just as much the operator's problem as the client's: 503 either way.)
_UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    asyncio.TimeoutError,
    APIError,
)


class CorruptObject(Exception):
    """An object's chunks do not add up to its meta (size or digest): never served as good."""


async def ensure_bucket(js: JetStreamContext, area: Area, replicas: int) -> ObjectStore:
    """Create the area's bucket, or find it and scale its replicas up to `replicas` (never down)."""
    bucket = BUCKETS[area]
    config = api.ObjectStoreConfig(
        description=f"imagequeue {area.value}", storage=api.StorageType.FILE, replicas=replicas
    )
    try:
        return await js.create_object_store(bucket, config=config)
    except BadRequestError as exc:
        if exc.err_code != queue.STREAM_NAME_IN_USE:
            raise
    stream = (await js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=bucket))).config
    if (stream.num_replicas or 1) < replicas:
        log.warning("bucket %s has %d replica(s); scaling it up to %d", bucket, stream.num_replicas, replicas)
        stream.num_replicas = replicas
        await js.update_stream(stream)
    return await js.object_store(bucket)


class NatsStorage(Storage):
    """Stored files as objects; the folders hold temporary files only. Owns its own NATS connection,
    so multi-megabyte chunk traffic never queues ahead of task publishes, acks and heartbeats."""

    def __init__(self, folders: Folders, nats_url: str, *, replicas: int, client_name: str) -> None:
        super().__init__(folders)
        self._replicas = replicas
        self._connection = queue.Connection(
            nats_url, name=client_name, what="the object store buckets", ensure=self._ensure_buckets
        )
        self._background: loops.Background | None = None
        self._orphans_checked_at = -math.inf

    @property
    def is_ready(self) -> bool:
        return self._connection.is_ready

    @property
    def problem(self) -> str | None:
        return self._connection.problem

    async def connect(self, stop: asyncio.Event) -> None:
        await self._connection.open(stop)

    def start_in_background(self) -> None:
        self._background = loops.Background("object store")
        self._background.start(
            self._connection.open(self._background.stop, keep_trying=True), name="object-store-connect"
        )

    async def close(self) -> None:
        if self._background is not None:
            await self._background.close()
        await self._connection.close()

    async def _ensure_buckets(self, js: JetStreamContext) -> dict[Area, ObjectStore]:
        return {area: await ensure_bucket(js, area, self._replicas) for area in BUCKETS}

    def _store(self, area: Area) -> ObjectStore:
        stores = self._connection.made
        if not self.is_ready or stores is None:
            raise StorageUnavailable(NOT_READY)
        return stores[area]

    async def keep_upload(self, temp: Path, name: str) -> None:
        await self._put(Area.UPLOADS, temp, name)

    async def keep_output(self, temp: Path, name: str) -> None:
        await self._put(Area.PROCESSED, temp, name)

    async def keep(self, area: Area, temp: Path, name: str) -> None:
        await self._put(area, temp, name)

    async def _put(self, area: Area, temp: Path, name: str) -> None:
        """Store the file's bytes under `name`, then delete the file. A failed put leaves no object
        (its meta was never written), only chunks nobody can see."""
        deadline = time.monotonic() + PUT_PATIENCE_SECONDS

        async def put() -> None:
            store = self._store(area)
            # nats-py reads it in 128 KiB chunks (readinto, in a thread), one publish each.
            with open(temp, "rb") as source:  # noqa: ASYNC230
                await store.put(name, source)

        def pause(exc: Exception) -> float:
            if not isinstance(exc, _UNAVAILABLE):
                raise exc
            if time.monotonic() + PUT_RETRY_SECONDS > deadline or not self.is_ready:
                raise StorageUnavailable(f"storing {name}: {_describe(exc)}") from exc
            log.info("storing %s: %s; trying again", name, _describe(exc))
            return PUT_RETRY_SECONDS

        # No stop event: a put under way is part of a request, which ends with it.
        await loops.retry(put, stop=asyncio.Event(), pause=pause)
        remove_quietly(temp)

    async def _info(self, area: Area, name: str) -> api.ObjectInfo | None:
        store = self._store(area)
        try:
            return await store.get_info(name)
        except NotFoundError:  # ObjectNotFoundError included (never stored, or deleted)
            return None
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"looking up {name}: {_describe(exc)}") from exc

    async def _chunks(self, area: Area, info: api.ObjectInfo) -> AsyncIterator[bytes]:
        """The object's bytes, one chunk per request, checked against its meta at the end."""
        js = self._connection.jetstream
        bucket = BUCKETS[area]
        stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid)
        digest = hashlib.sha256()
        size = 0
        seq = 1
        for _ in range(info.chunks or 0):
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                # Its chunks were purged meanwhile: deleted, or replaced by a re-render.
                raise StoredFileMissing(info.name) from None
            except _UNAVAILABLE as exc:
                raise StorageUnavailable(f"reading {info.name}: {_describe(exc)}") from exc
            data = msg.data or b""
            digest.update(data)
            size += len(data)
            seq = (msg.seq or seq) + 1
            yield data
        expected = base64.urlsafe_b64decode((info.digest or "").removeprefix(OBJ_DIGEST_TYPE))
        if size != info.size or digest.digest() != expected:
            raise CorruptObject(f"{info.name}: {size} bytes read of {info.size}, or a wrong digest")

    @contextlib.asynccontextmanager
    async def local_upload_path(self, name: str) -> AsyncIterator[Path]:
        info = await self._info(Area.UPLOADS, name)
        if info is None:
            raise StoredFileMissing(name)
        async with self._written_to_temp(self._chunks(Area.UPLOADS, info)) as temp:
            yield temp

    async def find(self, area: Area, name: str) -> Path | StoredObject | None:
        info = await self._info(area, name)
        if info is None:
            return None
        # The object's digest names its content: a strong validator for ETag and If-Range.
        etag = f'"{info.digest}"' if info.digest else None
        return StoredObject(size=info.size or 0, chunks=self._chunks(area, info), etag=etag)

    async def remove(self, area: Area, names: list[str]) -> None:
        for name in names:
            store = self._store(area)
            try:
                await store.delete(name)
            except NotFoundError:
                pass
            except _UNAVAILABLE as exc:
                raise StorageUnavailable(f"deleting {name}: {_describe(exc)}") from exc

    async def remove_stale(self, older_than_seconds: float) -> int:
        """Temporary files in the folders, and (at most once per `older_than_seconds`: it reads every
        object's meta) chunks of puts cut short, which no meta points to."""
        removed = await asyncio.to_thread(self.folders.remove_stale_partials, older_than_seconds)
        if self.is_ready and time.monotonic() - self._orphans_checked_at >= older_than_seconds:
            self._orphans_checked_at = time.monotonic()
            for area in BUCKETS:
                removed += await self._remove_orphan_chunks(area, older_than_seconds)
        return removed

    async def stored_before(self, area: Area, older_than_seconds: float, *, limit: int) -> list[str]:
        """From every object's meta (its `mtime`, which the writer sets when the put completes)."""
        if not self.is_ready:
            return []
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        try:
            infos = await self._store(area).list(ignore_deletes=True)
        except NotFoundError:  # no live object at all
            return []
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"listing {BUCKETS[area]}: {_describe(exc)}") from exc
        found = [info.name for info in infos if info.name and _stored_at(info) < cutoff]
        return found[:limit]

    async def _remove_orphan_chunks(self, area: Area, older_than_seconds: float) -> int:
        """Purge chunk subjects that no object's meta names and whose first chunk is older than that
        (younger ones may belong to a put still under way)."""
        js = self._connection.jetstream
        bucket = BUCKETS[area]
        stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        prefix = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj="")
        subjects = (await js.stream_info(stream, subjects_filter=f"{prefix}>")).state.subjects or {}
        if not subjects:
            return 0
        # Listed after the chunks: an object completed in between counts as live.
        try:
            live = {info.nuid for info in await self._store(area).list(ignore_deletes=True)}
        except NotFoundError:  # no live object at all
            live = set()
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        removed = 0
        for subject in subjects:
            if subject.removeprefix(prefix) in live:
                continue
            first = await js.get_msg(stream, seq=1, subject=subject, next=True)
            if first.time is not None and first.time < cutoff:
                await js.purge_stream(stream, subject=subject)
                log.warning("purged the chunks of a put cut short in %s (%s)", bucket, subject)
                removed += 1
        return removed


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _stored_at(info: api.ObjectInfo) -> datetime:
    """When the object was put; an mtime that does not parse (another client's) reads as now, so
    such an object is never taken for an old one."""
    try:
        stored = datetime.fromisoformat(info.mtime or "")
    except ValueError:
        return datetime.now(UTC)
    return stored if stored.tzinfo is not None else stored.replace(tzinfo=UTC)
