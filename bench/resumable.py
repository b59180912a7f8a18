"""A 100 MB upload through tus (/files/) against the same file as one `POST /upload`: throughput and
the API's RSS growth, per storage backend (not a test).

    .venv/bin/python -m bench.resumable [--mb 100] [--piece-mb 8] [--backends local,nats]

Starts throwaway PostgreSQL and NATS on 127.0.0.1 and, per backend, a fresh API process with
MAX_UPLOAD_BYTES raised to fit. The file is a BMP of random pixels (a real image the final PATCH
identifies; BMP so that making it costs nothing). Each backend runs, in order:

- `POST /upload`, one streamed multipart request (the baseline);
- tus in one PATCH, then tus in pieces of `--piece-mb` (tuspy's async client, as a user would);
- tus with its connection reset half-way, then resumed by tuspy from the server's offset.

For each: wall time from the first byte to the answer naming the task, MB/s, the API's CPU seconds,
and its peak RSS growth over its RSS before that upload (sampled from /proc every 10 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image
from tusclient.client import TusClient

from bench.stack import bench_environment
from bench.storage import cpu_seconds
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, start_api, stop_process, wait_until_ready

MB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The highest RSS of a process while the context lasts, sampled every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Result:
    backend: str
    how: str
    seconds: float
    api_cpu: float
    rss_growth: int
    task_id: int


def random_bmp(megabytes: int) -> bytes:
    side = int((megabytes * MB / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "BMP")
    return buffer.getvalue()


async def classic(base_url: str, path: Path) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        with path.open("rb") as stream:
            answer = await client.post("/upload", files={"file": ("big.bmp", stream, "image/bmp")})
        answer.raise_for_status()
        return int(answer.json()["task_id"])


async def tus(base_url: str, data: bytes, piece: int) -> int:
    uploader = TusClient(f"{base_url}/files/").async_uploader(
        file_stream=io.BytesIO(data), chunk_size=piece, metadata={"filename": "big.bmp"}
    )
    await uploader.upload()
    async with httpx.AsyncClient(timeout=60) as client:
        head = await client.head(uploader.url, headers={"Tus-Resumable": "1.0.0"})
    return int(head.headers["imagequeue-task-id"])


async def tus_dropped(base_url: str, data: bytes, piece: int) -> int:
    """Half the file in one PATCH whose connection is reset, then tuspy resumes."""
    url = httpx.URL(base_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        created = await client.post(
            "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data))}
        )
    location = created.headers["location"]
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        (
            f"PATCH {location} HTTP/1.1\r\nHost: {url.host}\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
    )
    half = len(data) // 2
    for start in range(0, half, MB):
        writer.write(data[start : min(start + MB, half)])
        await writer.drain()
    writer.transport.abort()
    del reader
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the server may still be storing the part it got
            head = await client.head(location, headers={"Tus-Resumable": "1.0.0"})
            if int(head.headers["upload-offset"]):
                break
            await asyncio.sleep(0.05)
    uploader = TusClient(f"{base_url}/files/").async_uploader(
        file_stream=io.BytesIO(data), url=f"{base_url}{location}", chunk_size=piece
    )
    await uploader.upload()
    async with httpx.AsyncClient(timeout=60) as client:
        head = await client.head(f"{base_url}{location}", headers={"Tus-Resumable": "1.0.0"})
    return int(head.headers["imagequeue-task-id"])


def measure(backend: str, how: str, pid: int, run: Callable[[], Awaitable[int]]) -> Result:
    cpu_before = cpu_seconds(pid)
    with PeakRss(pid) as peak:
        before = peak.peak
        started = time.perf_counter()
        task_id = asyncio.run(run())
        seconds = time.perf_counter() - started
    return Result(backend, how, seconds, cpu_seconds(pid) - cpu_before, peak.peak - before, task_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--piece-mb", type=int, default=8)
    parser.add_argument("--backends", default="local,nats")
    args = parser.parse_args()
    data = random_bmp(args.mb)
    piece = args.piece_mb * MB
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-resumable-bench-"))
    source = workdir / "big.bmp"
    source.write_bytes(data)
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    servers.start()
    results: list[Result] = []
    try:
        migrate(servers.postgres.url())
        for backend in args.backends.split(","):
            env = bench_environment(
                servers, workdir, STORAGE_BACKEND=backend, MAX_UPLOAD_BYTES=str(len(data) + MB)
            )
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            api = start_api(env, port, log_file=workdir / f"api-{backend}.log")
            try:
                wait_until_ready(base_url, timeout=60, process=api)
                asyncio.run(tus(base_url, random_bmp(1), MB))  # warm-up: imports, pools, buckets
                runs: list[tuple[str, Callable[[], Awaitable[int]]]] = [
                    ("POST /upload", functools.partial(classic, base_url, source)),
                    ("tus, one PATCH", functools.partial(tus, base_url, data, len(data))),
                    (f"tus, {args.piece_mb} MB pieces", functools.partial(tus, base_url, data, piece)),
                    ("tus, reset at 50%, resumed", functools.partial(tus_dropped, base_url, data, piece)),
                ]
                for how, run in runs:
                    results.append(measure(backend, how, api.pid, run))
                    print(results[-1], flush=True)
            finally:
                stop_process(api)
    finally:
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{os.cpu_count()} CPU(s); one {len(data) / MB:.0f} MiB BMP per upload")
    print("| backend | how | seconds | MB/s | API CPU s | API RSS growth |")
    print("|---|---|---:|---:|---:|---:|")
    for result in results:
        rate = len(data) / MB / result.seconds
        print(
            f"| {result.backend} | {result.how} | {result.seconds:.2f} | {rate:.0f} "
            f"| {result.api_cpu:.2f} | {result.rss_growth / MB:.1f} MiB |"
        )


if __name__ == "__main__":
    main()
