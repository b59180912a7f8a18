"""A full output volume: the worker hands the task back (no attempt counted) and tries again later,
instead of burning every attempt and failing the task with "No space left on device".

For real: an in-process worker whose PROCESSED_DIR is a small tmpfs, so the output's writes fail
with ENOSPC as on a full volume; then the volume grows (remount) and the task is done. Mounting
needs root (the suite runs as root in CI); elsewhere the test is skipped rather than faked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession

from config import get_settings
from core.storage.base import TEMP_PREFIX
from tests import images
from tests.tmpfs import small_tmpfs
from tests.waiting import eventually, final_row, task_row
from worker.__main__ import run

TMPFS_BYTES = 64 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small-processed", TMPFS_BYTES) as mount_point:
        yield mount_point


def _noise_png(side: int) -> bytes:
    """Random pixels: the output (same format, watermarked) cannot compress below ~3 bytes a pixel."""
    return images.encode(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)), "PNG")


async def test_a_full_output_volume_hands_the_task_back_until_there_is_room(
    client: httpx.AsyncClient,
    db: AsyncSession,
    stack_env: dict[str, str],
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.consumer")
    stop = asyncio.Event()
    worker = asyncio.create_task(run(replace(get_settings(), processed_dir=small_disk), stop))
    try:
        posted = await client.post("/upload", files={"file": ("noise.png", _noise_png(300), "image/png")})
        assert posted.status_code == 200, posted.text
        task_id = posted.json()["task_id"]

        def handed_back() -> int:
            return sum("no space for its output" in record.getMessage() for record in caplog.records)

        async def handed_back_three_times() -> bool:
            return handed_back() >= 3

        # Over MAX_ATTEMPTS (3 in the suite): the attempts would be used up by now if they counted.
        await eventually(handed_back_three_times, timeout=30, what="the task handed back three times")
        row = await task_row(db, task_id)
        assert row.status in ("pending", "processing"), row.error
        assert row.attempts <= 1, "a full volume costs no attempt"
        assert not list(small_disk.glob(f"{TEMP_PREFIX}*")), "no partial output is left"

        remount = ["mount", "-o", "remount,size=8m", str(small_disk)]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        done = await final_row(db, task_id, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    assert (done.status, done.attempts, done.error) == ("done", 1, None)
    assert (small_disk / done.output_name).stat().st_size > TMPFS_BYTES
