"""Arguments, commands and exit codes of `python -m client`.

Exit codes: 0 when everything asked for succeeded (with `--wait`: every task `done`), 1 when the
server refused something (such as a retry of a task that did not fail: 409, with its reason), a
task failed or was cancelled or was not finished in time, or the server could not be
reached; 2 for a usage error (bad option, a file that does not exist, `--ops` that is not JSON),
before anything is sent. The client is its own program, so this module (not the server's
config.py) reads its two environment variables, IMAGEQUEUE_URL and IMAGEQUEUE_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from client import report, reprocess
from client.connection import ApiError, checked, make_client, unreachable
from client.progress import Progress
from client.resumable import RESUMABLE_FROM_BYTES
from client.uploads import Source, UploadOptions, upload_files

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CONCURRENCY = 4
DEFAULT_WAIT_SECONDS = 600.0
MAX_PAGE = 100  # the server's largest page of GET /tasks

OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _byte_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def _focus_point(text: str) -> str:
    # Only the shape is checked here (a typo is a usage error before anything is sent); the server
    # judges the range, as it does for --ops, and its words come back as they are.
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        for part in parts:
            float(part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be two numbers x,y such as 0.3,0.6, got {text!r}") from None
    return text.strip()


def _base_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must start with http:// or https://, got {text!r}")
    return text.rstrip("/")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        type=_base_url,
        default=os.environ.get("IMAGEQUEUE_URL") or DEFAULT_URL,
        help=f"the API's base URL (default: $IMAGEQUEUE_URL or {DEFAULT_URL})",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("IMAGEQUEUE_API_KEY") or None,
        help="sent as X-API-Key (default: $IMAGEQUEUE_API_KEY; only needed when the server has API keys)",
    )
    common.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")

    parser = argparse.ArgumentParser(
        prog="python -m client", description="Command-line client for the imagequeue API."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upload = commands.add_parser(
        "upload", parents=[common], help="upload images (many at once)", description="Upload images."
    )
    upload.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="image files, or http(s):// URLs for the server to import (it needs URL_IMPORT on)",
    )
    upload.add_argument("--preset", help="processing preset name (sent as the form field `preset`)")
    upload.add_argument("--ops", help="processing operations as JSON (form field `ops`)")
    upload.add_argument("--outputs", help="outputs wanted as JSON (form field `outputs`)")
    upload.add_argument(
        "--focus",
        type=_focus_point,
        metavar="X,Y",
        help='the point `gravity: "focus"` keeps: fractions 0-1 of the picture as displayed, from the '
        "top left, such as 0.3,0.6 (form field `focus`)",
    )
    upload.add_argument(
        "--resumable-from",
        type=_byte_count,
        default=RESUMABLE_FROM_BYTES,
        metavar="BYTES",
        help="files of this size and more go in pieces through /files/ (tus) and resume after a "
        "dropped connection; 0 for never (default 8 MiB)",
    )
    upload.add_argument(
        "--priority",
        choices=("interactive", "normal", "bulk"),
        help="which waiting task the server processes first (form field `priority`; default normal)",
    )
    upload.add_argument("--wait", action="store_true", help="follow each task to its end")
    upload.add_argument(
        "--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY, help="requests at once (default 4)"
    )
    upload.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_WAIT_SECONDS,
        help="with --wait, give up on a task not finished after this many seconds (default 600)",
    )

    status = commands.add_parser("status", parents=[common], help="show one task")
    status.add_argument("task_id", type=_positive_int, metavar="ID")

    listing = commands.add_parser("list", parents=[common], help="list tasks, newest first")
    listing.add_argument("--status", choices=("pending", "processing", "done", "failed", "cancelled"))
    listing.add_argument("--limit", type=_positive_int, default=20, help="how many tasks (default 20)")

    delete = commands.add_parser("delete", parents=[common], help="delete a task and its files")
    delete.add_argument("task_id", type=_positive_int, metavar="ID")

    retry = commands.add_parser("retry", parents=[common], help="run a failed task again")
    retry.add_argument("task_id", type=_positive_int, metavar="ID")
    retry.add_argument(
        "--failed-outputs",
        action="store_true",
        help="make again only the outputs that failed, keeping those that were made",
    )

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a pending or processing task")
    cancel.add_argument("task_id", type=_positive_int, metavar="ID")
    reprocess.add_commands(commands, common, _positive_int, _focus_point)
    return parser


def _form_fields(args: argparse.Namespace) -> dict[str, str]:
    fields: dict[str, str] = {}
    if args.preset is not None:
        fields["preset"] = args.preset
    if args.focus is not None:
        fields["focus"] = args.focus
    if args.priority is not None:
        fields["priority"] = args.priority
    for name in ("ops", "outputs"):
        text = getattr(args, name)
        if text is None:
            continue
        try:
            json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--{name} is not valid JSON: {exc}") from None
        fields[name] = text  # as typed: the server validates the meaning
    return fields


def _sources(texts: list[str]) -> list[Source]:
    """Each argument as a file to send, or (http:// or https://) a URL for the server to fetch."""
    sources: list[Source] = []
    for text in texts:
        if text.lower().startswith(("http://", "https://")):
            sources.append(text)
            continue
        path = Path(text)
        if not path.is_file():
            raise UsageError(f"not a file: {path}")
        sources.append(path)
    return sources


async def _upload(args: argparse.Namespace) -> int:
    options = UploadOptions(
        fields=_form_fields(args),
        wait=args.wait,
        wait_seconds=args.timeout,
        concurrency=args.concurrency,
        resumable_from=args.resumable_from,
    )
    paths = _sources(args.files)
    progress = Progress(sys.stderr, len(paths))
    async with make_client(args.url, args.api_key, connections=args.concurrency) as http:
        results = await upload_files(http, paths, options, progress)
    report.upload_results(sys.stdout, results, as_json=args.json)
    wanted = "done" if args.wait else "accepted"
    return OK if all(result.status == wanted for result in results) else FAILED


async def _status(args: argparse.Namespace) -> int:
    async with make_client(args.url, args.api_key, connections=1) as http:
        body = checked(await http.get(f"/status/{args.task_id}")).json()
    report.task(sys.stdout, body, args.url, as_json=args.json)
    return OK


async def _list(args: argparse.Namespace) -> int:
    items: list[dict[str, Any]] = []
    cursor: int | None = None
    async with make_client(args.url, args.api_key, connections=1) as http:
        while len(items) < args.limit:
            params: dict[str, str | int] = {"limit": min(MAX_PAGE, args.limit - len(items))}
            if args.status:
                params["status"] = args.status
            if cursor is not None:
                params["cursor"] = cursor
            page = checked(await http.get("/tasks", params=params)).json()
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if cursor is None:
                break
    report.task_list(sys.stdout, items, args.url, as_json=args.json)
    return OK


async def _delete(args: argparse.Namespace) -> int:
    async with make_client(args.url, args.api_key, connections=1) as http:
        checked(await http.delete(f"/tasks/{args.task_id}"))
    if args.json:
        report.write_json(sys.stdout, {"task_id": args.task_id, "deleted": True})
    else:
        sys.stdout.write(f"deleted task {args.task_id}\n")
    return OK


async def _retry(args: argparse.Namespace) -> int:
    params = {"outputs": "failed"} if args.failed_outputs else {}
    async with make_client(args.url, args.api_key, connections=1) as http:
        body = checked(await http.post(f"/tasks/{args.task_id}/retry", params=params)).json()
    report.task(sys.stdout, body, args.url, as_json=args.json)
    return OK


async def _cancel(args: argparse.Namespace) -> int:
    async with make_client(args.url, args.api_key, connections=1) as http:
        body = checked(await http.post(f"/tasks/{args.task_id}/cancel")).json()
    report.task(sys.stdout, body, args.url, as_json=args.json)
    return OK


COMMANDS = {
    "upload": _upload,
    "status": _status,
    "list": _list,
    "delete": _delete,
    "retry": _retry,
    "cancel": _cancel,
    "reprocess": reprocess.reprocess,
    "jobs": reprocess.jobs,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits 2 on a usage error, as argparse does
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except (UsageError, reprocess.UsageError) as exc:
        print(f"python -m client: {exc}", file=sys.stderr)
        return USAGE
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return FAILED
    except httpx.HTTPError as exc:
        print(f"error: {unreachable(args.url, exc).message}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130
