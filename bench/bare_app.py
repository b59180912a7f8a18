"""The ceiling for ingest: a FastAPI app that only streams the multipart file to disk and answers.

    uvicorn bench.bare_app:app      (the suite starts it exactly as it starts the real API)

No database, no NATS, no size cap, no sniffing, no fsync: the same framework, multipart parser and
file writes as `/upload`, and nothing else. The real endpoint's rate over this one's, in the same run,
is the share of the machine that the upload path itself leaves to the framework.

For bench/ladder.py, `BARE_STEPS` (comma-separated) adds the real endpoint's steps one at a time,
each done with the project's own functions: `sync` (fsync and header probe in one thread hop, then
the durable rename in another, as api/uploads.py and api/routes/tasks.py do), `orm` (the row
inserted through an AsyncSession from a dependency: add, flush, commit), `core` (the same row with
one Core INSERT ... RETURNING in one transaction, instead of `orm`), `noping` (with `core`: an
engine without pool_pre_ping), `asyncpg` (the same INSERT on a plain asyncpg pool, no SQLAlchemy),
`publish` (the task id published and marked queued through api.publisher.TaskPublisher).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

_FOLDER = Path(os.environ.get("UPLOADS_DIR", "uploads"))
STEPS = {step.strip() for step in os.environ.get("BARE_STEPS", "").split(",") if step.strip()}
_state: dict[str, Any] = {}
# What the real endpoint stores for an upload without processing fields (the `default` preset).
_PROCESSING = {
    "outputs": [{"name": "image", "preset": "default", "ops": [{"op": "watermark", "text": "bench"}]}]
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if "asyncpg" in STEPS:
        import asyncpg

        from config import get_settings

        url = get_settings().database_url.replace("postgresql+asyncpg://", "postgresql://")
        dsn, _, host = url.partition("?host=")
        _state["pool"] = await asyncpg.create_pool(dsn, host=host or None, min_size=20, max_size=30)
        try:
            yield
        finally:
            await _state["pool"].close()
        return
    if not STEPS & {"orm", "core", "publish"}:
        yield
        return
    from api.publisher import TaskPublisher
    from config import get_settings
    from core.db import make_engine, make_sessionmaker

    settings = get_settings()
    engine = make_engine(settings.database_url)
    if "noping" in STEPS:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(settings.database_url, pool_size=20, max_overflow=10)
    _state["sessions"] = make_sessionmaker(engine)
    publisher = None
    if "publish" in STEPS:
        publisher = TaskPublisher(settings.nats_url)
        publisher.start()
        _state["publisher"] = publisher
    try:
        yield
    finally:
        if publisher is not None:
            await publisher.close()
        await engine.dispose()


app = FastAPI(lifespan=lifespan)


async def _session() -> AsyncIterator[AsyncSession | None]:
    if "sessions" not in _state:
        yield None
        return
    async with _state["sessions"]() as session:
        yield session


def _finish(target: Any, path: Path) -> Any:
    from core.formats import probe_image

    target.flush()
    os.fsync(target.fileno())
    return probe_image(path, max_pixels=50_000_000, max_frames=500)


@app.post("/upload")
async def upload(
    request: Request, session: Annotated[AsyncSession | None, Depends(_session)]
) -> JSONResponse:
    _, params = parse_options_header(request.headers["content-type"])
    path = _FOLDER / f"bare-{uuid.uuid4().hex}"
    written = 0
    with open(path, "wb") as target:  # noqa: ASYNC230 — page-cache writes, as the real endpoint does

        def on_part_data(data: bytes, start: int, end: int) -> None:
            nonlocal written
            written += end - start
            target.write(data[start:end])

        parser = MultipartParser(params[b"boundary"], {"on_part_data": on_part_data})
        async for chunk in request.stream():
            parser.write(chunk)
        if "sync" in STEPS:
            await anyio.to_thread.run_sync(_finish, target, path)
    if "sync" in STEPS:
        from core.storage import rename_durably

        final = path.with_name(f"{uuid.uuid4().hex}.jpg")
        await anyio.to_thread.run_sync(rename_durably, path, final)
    task_id = 0
    if "asyncpg" in STEPS:
        async with _state["pool"].acquire() as connection:
            task_id = await connection.fetchval(
                "INSERT INTO image_tasks (filename, content_type, size_bytes, width, height, sha256,"
                " input_name, processing) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                *("bench.jpg", "image/jpeg", written, 600, 450, "0" * 64, f"{uuid.uuid4().hex}.jpg"),
                json.dumps(_PROCESSING),
            )
    elif session is not None:
        task_id = await _insert(session, written)
    if "publish" in STEPS:
        # The dispatcher's publish alone (api/dispatcher.py), without its pass around it.
        from core import queue

        js = _state["publisher"].jetstream
        if js is not None:
            await queue.publish_task(js, task_id)
    return JSONResponse({"task_id": task_id, "bytes": written})


async def _insert(session: AsyncSession, size: int) -> int:
    from core.models import ImageTask

    values = {
        "filename": "bench.jpg",
        "content_type": "image/jpeg",
        "size_bytes": size,
        "width": 600,
        "height": 450,
        "sha256": "0" * 64,
        "input_name": f"{uuid.uuid4().hex}.jpg",
        "processing": _PROCESSING,
    }
    if "core" in STEPS:
        async with session.begin():
            return int(await session.scalar(insert(ImageTask).values(values).returning(ImageTask.id)))
    task = ImageTask(**values)
    session.add(task)
    await session.flush()
    await session.commit()
    return task.id
