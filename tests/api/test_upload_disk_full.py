"""A full disk under UPLOADS_DIR at upload: 503 with Retry-After, and nothing left behind.

For real: an API process whose UPLOADS_DIR is a 256 KiB tmpfs, so the upload's own writes fail with
ENOSPC as they would on a full volume. Mounting needs root (the suite runs as root in CI); elsewhere
the test is skipped rather than faked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.uploads import STORAGE_FAILED
from devstack.stack import running_api
from tests import images
from tests.tmpfs import small_tmpfs

TMPFS_BYTES = 256 * 1024


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small-uploads", TMPFS_BYTES) as mount_point:
        yield mount_point


@pytest.fixture
def api_on_full_disk(stack_env: dict[str, str], full_disk: Path, tmp_path: Path) -> Iterator[str]:
    with running_api({**stack_env, "UPLOADS_DIR": str(full_disk)}, log_file=tmp_path / "api.log") as url:
        yield url


def _noise_png(size_bytes: int) -> bytes:
    """A PNG of random pixels (incompressible) of about `size_bytes`."""
    side = int((size_bytes / 3) ** 0.5)
    return images.encode(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)), "PNG")


async def test_an_upload_that_fills_the_disk_is_a_503_with_retry_after_and_leaves_nothing(
    api_on_full_disk: str, full_disk: Path
) -> None:
    data = _noise_png(4 * TMPFS_BYTES)  # within MAX_UPLOAD_BYTES (1 MB in the suite), over the disk
    async with httpx.AsyncClient(base_url=api_on_full_disk, timeout=30) as client:
        response = await client.post("/upload", files={"file": ("big.png", data, "image/png")})
        assert response.status_code == 503, response.text
        assert response.json()["detail"] == STORAGE_FAILED
        assert int(response.headers["Retry-After"]) > 0
        assert list(full_disk.iterdir()) == []

        # The same disk still takes what fits: the refusal was the disk's, not the API's state.
        small = await client.post("/upload", files={"file": ("small.png", images.png(), "image/png")})
        assert small.status_code == 200, small.text
