"""A 100 MB upload through the presigned path (direct upload) against a plain PUT to the same S3
server, with the API's memory (not a test).

    .venv/bin/python -m bench.direct_upload [--megabytes 100] [--rounds 2]

Starts throwaway PostgreSQL, NATS and SeaweedFS on 127.0.0.1 and one API on the s3 backend (no
worker: this is ingest). The file is a PNG of noise (stored, not compressed), so completion's probe
sees a real image of that size. Each round times:

- direct: `POST /uploads`, the presigned POST to SeaweedFS (streamed from disk by httpx), and
  `POST /uploads/{id}/complete` (which reads the object once to identify and hash it);
- PUT: the same file PUT to the same bucket with a presigned URL, no API involved;
- /upload: the same file through the API (streamed to its temporary file, probed, put to S3).

The API's RSS is sampled every 10 ms during each path: growth is its peak minus its RSS before.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import botocore.session
import httpx
from PIL import Image

from bench.stack import bench_environment
from devstack.servers import SEAWEED_ACCESS_KEY, SEAWEED_REGION, SEAWEED_SECRET_KEY, LocalSeaweed, free_port
from devstack.stack import LocalServers, migrate, start_api, stop_process, wait_until_ready

BUCKET = "direct-bench"


@dataclass(frozen=True)
class Measured:
    path: str
    seconds: float
    rss_growth_mib: float


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextmanager
def rss_peak(pid: int) -> Iterator[Callable[[], float]]:
    """Samples `pid`'s RSS while the block runs; yields a function giving the growth in MiB."""
    before = rss_kib(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: (peak - before) / 1024
    finally:
        done.set()
        sampler.join()
        peak = max(peak, rss_kib(pid))


def noise_png(path: Path, megabytes: int) -> None:
    """An RGB PNG of random pixels, stored without compression: about `megabytes` MB."""
    side = int((megabytes * 1_000_000 / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    image.save(path, "PNG", compress_level=0)


def direct(base_url: str, path: Path, size: int, steps: list[tuple[float, float, float]]) -> None:
    """The three requests; appends each one's seconds (declare, POST to the bucket, complete)."""
    with httpx.Client(base_url=base_url, timeout=600) as api, httpx.Client(timeout=600) as store:
        body = {"filename": path.name, "size": size, "content_type": "image/png"}
        started = time.perf_counter()
        declared = api.post("/uploads", json=body)
        declared.raise_for_status()
        plan = declared.json()
        posting = time.perf_counter()
        with path.open("rb") as file:
            sent = store.post(
                plan["url"], data=plan["fields"], files={"file": (path.name, file, "image/png")}
            )
        if sent.status_code >= 300:
            raise RuntimeError(f"the bucket answered {sent.status_code}: {sent.text[:300]}")
        completing = time.perf_counter()
        api.post(plan["complete_url"]).raise_for_status()
        steps.append((posting - started, completing - posting, time.perf_counter() - completing))


def plain_put(url: str, path: Path, size: int) -> None:
    with httpx.Client(timeout=600) as store, path.open("rb") as file:
        store.put(url, content=file, headers={"Content-Length": str(size)}).raise_for_status()


def through_api(base_url: str, path: Path, size: int) -> None:
    with httpx.Client(base_url=base_url, timeout=600) as api, path.open("rb") as file:
        api.post("/upload", files={"file": (path.name, file, "image/png")}).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-direct-bench-"))
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    seaweed = LocalSeaweed(workdir / "seaweed", log_file=workdir / "seaweed.log")
    api = None
    results: list[Measured] = []
    steps: list[tuple[float, float, float]] = []
    try:
        servers.start()
        seaweed.start()
        migrate(servers.postgres.url())
        image = workdir / "noise.png"
        noise_png(image, args.megabytes)
        size = image.stat().st_size
        env = bench_environment(
            servers,
            workdir,
            **seaweed.environment(),
            S3_BUCKET=BUCKET,
            MAX_UPLOAD_BYTES=str(size + 1024 * 1024),
        )
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = start_api(env, port, log_file=workdir / "api.log")
        wait_until_ready(base_url, timeout=60, process=api)
        s3 = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=seaweed.endpoint_url,
            region_name=SEAWEED_REGION,
            aws_access_key_id=SEAWEED_ACCESS_KEY,
            aws_secret_access_key=SEAWEED_SECRET_KEY,
        )
        put_url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "bench/put.png"})
        print(
            f"{os.cpu_count()} CPU(s); a {size / 1e6:.1f} MB PNG; {args.rounds} round(s); SeaweedFS, loopback"
        )
        paths: dict[str, Callable[[], object]] = {
            "direct (declare + presigned POST + complete)": lambda: direct(base_url, image, size, steps),
            "plain PUT to the same S3 server": lambda: plain_put(put_url, image, size),
            "POST /upload through the API": lambda: through_api(base_url, image, size),
        }
        for _ in range(args.rounds):
            for name, run in paths.items():
                with rss_peak(api.pid) as growth:
                    started = time.perf_counter()
                    run()
                    seconds = time.perf_counter() - started
                results.append(Measured(name, seconds, growth()))
    finally:
        if api is not None:
            stop_process(api)
        seaweed.stop()
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("| path | seconds | MB/s | API RSS growth |")
    print("|---|---|---|---|")
    for measured in results:
        print(
            f"| {measured.path} | {measured.seconds:.2f} | {size / 1e6 / measured.seconds:.0f} | "
            f"{measured.rss_growth_mib:.1f} MiB |"
        )
    print()
    for declare, post, complete in steps:
        print(
            f"direct, each step: declare {declare:.3f} s, POST to the bucket {post:.2f} s, "
            f"complete {complete:.2f} s"
        )


if __name__ == "__main__":
    main()
