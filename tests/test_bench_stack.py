"""The benchmarks' throwaway system (bench/stack.py): waiting for a drain that does not end raises,
naming what it saw, instead of handing a partial count to a figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.stack import BenchStack

pytestmark = pytest.mark.timeout(120)


async def test_wait_final_raises_with_the_counts_it_saw_when_the_drain_does_not_end(tmp_path: Path) -> None:
    stack = BenchStack(tmp_path)
    await stack.start()
    try:
        # A task that no worker takes: one row `pending`, as a stalled drain leaves it.
        await stack.db.execute(
            "INSERT INTO image_tasks (filename, content_type, size_bytes, width, height, sha256, "
            "input_name, processing, status) VALUES ('a.jpg', 'image/jpeg', 1, 1, 1, repeat('0', 64), "
            "repeat('a', 32) || '.jpg', '{}', 'pending')"
        )

        with pytest.raises(TimeoutError) as timed_out:
            await stack.wait_final(1, within=0.2)
        assert await stack.wait_final(0, within=0.2) == {"pending": 1}
    finally:
        await stack.stop()

    assert str(timed_out.value) == "0 of 1 tasks done or failed within 0.2 s; by status: {'pending': 1}"
