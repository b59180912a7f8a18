"""The ceiling for ingest: a FastAPI app that only streams the multipart file to disk and answers.

    uvicorn bench.bare_app:app      (the suite starts it exactly as it starts the real API)

No database, no NATS, no size cap, no sniffing, no fsync: the same framework, multipart parser and
file writes as `/upload`, and nothing else. The real endpoint's rate over this one's, in the same run,
is the share of the machine that the upload path itself leaves to the framework.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header

app = FastAPI()
_FOLDER = Path(os.environ.get("UPLOADS_DIR", "uploads"))


@app.post("/upload")
async def upload(request: Request) -> JSONResponse:
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
    return JSONResponse({"task_id": 0, "bytes": written})
