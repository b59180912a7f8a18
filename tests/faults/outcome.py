"""What must hold once the fault is over: every accepted upload processed exactly once in effect.

- every task that got a 200 ends `done`, as `/status` reports it;
- no row the burst created (answered or cut off) is left `pending` or `processing`;
- each done task has exactly one output in PROCESSED_DIR or the processed bucket (named after its
  input, so a second run would have replaced it rather than added one), and it decodes completely.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from tests.waiting import eventually

TEMP_PREFIX = ".partial-"  # writers' temporary files (core/storage/base.py): not outputs, not uploads
FINAL = ("done", "failed")


@dataclass(frozen=True)
class TaskRow:
    id: int
    filename: str
    status: str
    attempts: int
    error: str | None
    input_name: str
    output_name: str | None
    width: int
    height: int
    queued_at: datetime | None


async def rows_named(db: AsyncSession, prefix: str) -> list[TaskRow]:
    """The rows whose display name starts with `prefix`, read fresh (no identity-map caching)."""
    columns = [getattr(ImageTask, column) for column in TaskRow.__dataclass_fields__]
    try:
        result = await db.execute(
            select(*columns)
            .where(ImageTask.filename.startswith(prefix, autoescape=True))
            .order_by(ImageTask.id)
        )
        return [TaskRow(*row) for row in result.all()]
    finally:
        await db.rollback()  # hold no connection between reads: the database may restart meanwhile


async def all_input_names(db: AsyncSession) -> set[str]:
    try:
        return set((await db.scalars(select(ImageTask.input_name))).all())
    finally:
        await db.rollback()


def stored_files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if not path.name.startswith(TEMP_PREFIX)}


async def wait_until_done(client: httpx.AsyncClient, task_ids: set[int], *, timeout: float) -> None:
    """Poll `/status` for each task until it is final; fail naming the stragglers at the deadline."""
    waiting = set(task_ids)
    last: dict[int, dict] = {}

    async def all_final() -> bool:
        answers = await asyncio.gather(*(client.get(f"/status/{task_id}") for task_id in sorted(waiting)))
        for task_id, answer in zip(sorted(waiting), answers, strict=True):
            assert answer.status_code == 200, (task_id, answer.status_code, answer.text)
            last[task_id] = answer.json()
            if last[task_id]["status"] in FINAL:
                waiting.discard(task_id)
        return not waiting

    # Every 0.2 s: each round asks the API about every task still open.
    await eventually(
        all_final, timeout=timeout, what=lambda: f"not final: {[last[t] for t in sorted(waiting)]}", every=0.2
    )
    not_done = [status for task_id, status in last.items() if status["status"] != "done"]
    assert not not_done, f"accepted uploads that did not end done: {not_done}"


async def wait_until_settled(db: AsyncSession, prefix: str, *, timeout: float) -> list[TaskRow]:
    """Wait until no row the burst created is `pending` or `processing` (cut-off uploads included)."""
    rows: list[TaskRow] = []
    open_rows: list[TaskRow] = []

    async def settled() -> bool:
        nonlocal rows, open_rows
        rows = await rows_named(db, prefix)
        open_rows = [row for row in rows if row.status not in FINAL]
        return not open_rows

    await eventually(settled, timeout=timeout, what=lambda: f"rows left open: {open_rows}", every=0.2)
    return rows


def assert_processed_once(rows: list[TaskRow], processed_dir: Path) -> None:
    """Each done row has one output, named after its input, alone under that name, fully decodable."""
    assert_outputs_once(rows, stored_files(processed_dir), lambda name: (processed_dir / name).read_bytes())


def assert_outputs_once(rows: list[TaskRow], outputs: set[str], read: Callable[[str], bytes]) -> None:
    """As assert_processed_once, for outputs wherever they are stored: their names, and a reader."""
    by_stem: dict[str, list[str]] = {}
    for name in outputs:
        by_stem.setdefault(Path(name).stem, []).append(name)
    for row in rows:
        if row.status != "done":
            continue
        stem = Path(row.input_name).stem
        assert row.output_name is not None and Path(row.output_name).stem == stem, row
        assert by_stem.get(stem) == [row.output_name], (row, by_stem.get(stem))
        with Image.open(io.BytesIO(read(row.output_name))) as output:
            output.load()  # raises on a truncated or corrupt file
            assert output.size == (row.width, row.height), (row, output.size)
