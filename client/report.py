"""What the client prints on stdout: aligned tables for people, JSON for programs (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from client.uploads import UploadResult


def table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell; the last one is left ragged (URLs, error messages)."""
    body = [["-" if cell is None else str(cell) for cell in row] for row in rows]
    cells = [[str(cell) for cell in header], *body]
    widths = [max(len(row[index]) for row in cells) for index in range(len(header) - 1)]
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*padded, row[-1]]).rstrip() + "\n")


def write_json(out: TextIO, value: Any) -> None:
    json.dump(value, out, indent=2, ensure_ascii=False)
    out.write("\n")


def upload_results(out: TextIO, results: Sequence[UploadResult], *, as_json: bool) -> None:
    if as_json:
        write_json(out, [result.as_json() for result in results])
        return
    table(
        out,
        ("FILE", "TASK", "STATUS", "RESULT"),
        [(r.file, r.task_id, r.status, r.processed_url or r.error or "") for r in results],
    )


def _point(point: Sequence[float] | None) -> str | None:
    return None if point is None else f"{point[0]:g},{point[1]:g}"


def task(out: TextIO, body: dict[str, Any], base_url: str, *, as_json: bool) -> None:
    if as_json:
        write_json(out, body)
        return
    out.write(f"task {body['task_id']}: {body['status']}\n")
    fields = [
        ("file", body.get("filename")),
        ("uploaded", body.get("upload_time")),
        ("attempts", body.get("attempts")),
        ("focus", _point(body.get("focus"))),
        ("priority", body.get("priority")),
        ("started", body.get("started_at")),
        ("finished", body.get("finished_at")),
        ("processed", _absolute(base_url, body.get("processed_url"))),
        ("error", body.get("error")),
    ]
    for name, value in fields:
        if value is not None:
            out.write(f"  {name + ':':<10} {value}\n")


def task_list(out: TextIO, items: Sequence[dict[str, Any]], base_url: str, *, as_json: bool) -> None:
    if as_json:
        write_json(out, list(items))
        return
    table(
        out,
        ("TASK", "STATUS", "UPLOADED", "FILE", "RESULT"),
        [
            (
                item["task_id"],
                item["status"],
                item.get("upload_time"),
                item.get("filename"),
                _absolute(base_url, item.get("processed_url")) or item.get("error") or "",
            )
            for item in items
        ],
    )


def _absolute(base_url: str, path: str | None) -> str | None:
    return f"{base_url.rstrip('/')}{path}" if path else None
