"""`reprocess` and `jobs`: reprocessing one task, or many through a bulk job, from the command line.

    python -m client reprocess 42 --preset thumbnail --wait
    python -m client reprocess --where status=done --where preset=thumbnail --preset thumbnail --follow
    python -m client jobs list | show ID | pause ID | resume ID | cancel ID | follow ID

Exit codes as the rest of the client (client/cli.py): with `--wait`, 1 unless the task ends `done`;
with `--follow`, 1 unless the job ends `done` with no task failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx

from client import report
from client.connection import checked, make_client

# A job's filter keys (POST /tasks/reprocess `where`).
WHERE_KEYS = ("status", "preset", "uploaded_after", "uploaded_before")
POLL_SECONDS = 1.0
FINAL_TASK = ("done", "failed", "cancelled")
FINAL_JOB = ("done", "cancelled")
JOB_ACTIONS = ("list", "show", "pause", "resume", "cancel", "follow")


class UsageError(Exception):
    pass


def _where(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or key not in WHERE_KEYS or not value:
        raise argparse.ArgumentTypeError(
            f"must be KEY=VALUE with KEY one of {', '.join(WHERE_KEYS)}, got {text!r}"
        )
    return key, value


def add_commands(commands: Any, common: argparse.ArgumentParser, positive_int: Any, focus: Any) -> None:
    """Add `reprocess` and `jobs` to the client's subcommands."""
    reprocess = commands.add_parser(
        "reprocess",
        parents=[common],
        help="reprocess one task (ID), or many (--where) as a bulk job",
        description="New outputs from the stored originals; the old ones stay served until replaced.",
    )
    reprocess.add_argument("task_id", nargs="?", type=positive_int, metavar="ID")
    reprocess.add_argument(
        "--where",
        type=_where,
        action="append",
        metavar="KEY=VALUE",
        help=f"bulk: reprocess the tasks matching every one given ({', '.join(WHERE_KEYS)}); "
        "`status` may be given twice",
    )
    reprocess.add_argument("--preset", help="processing preset name")
    reprocess.add_argument("--ops", help="processing operations as JSON")
    reprocess.add_argument("--outputs", help="outputs wanted as JSON")
    reprocess.add_argument("--focus", type=focus, metavar="X,Y", help="the point `gravity: focus` keeps")
    reprocess.add_argument("--max-in-flight", type=positive_int, help="bulk: tasks of the job queued at once")
    reprocess.add_argument("--wait", action="store_true", help="one task: follow it until it ends")
    reprocess.add_argument("--follow", action="store_true", help="bulk: follow the job until it ends")

    jobs = commands.add_parser(
        "jobs", parents=[common], help="list, show, pause, resume, cancel or follow bulk jobs"
    )
    jobs.add_argument("action", choices=JOB_ACTIONS)
    jobs.add_argument("job_id", nargs="?", type=positive_int, metavar="ID")


def _processing(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.preset is not None:
        body["preset"] = args.preset
    if args.focus is not None:
        body["focus"] = args.focus
    for name in ("ops", "outputs"):
        text = getattr(args, name)
        if text is None:
            continue
        try:
            body[name] = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--{name} is not valid JSON: {exc}") from None
    return body


def _where_body(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    where: dict[str, Any] = {}
    for key, value in pairs:
        if key == "status":
            where.setdefault("status", []).append(value)
        elif key in where:
            raise UsageError(f"--where {key}= is given twice")
        else:
            where[key] = value
    return where


async def reprocess(args: argparse.Namespace) -> int:
    if (args.task_id is None) == (args.where is None):
        raise UsageError("give a task ID, or --where for a bulk job (not both)")
    body = _processing(args)
    async with make_client(args.url, args.api_key, connections=1) as http:
        if args.task_id is not None:
            answer = checked(await http.post(f"/tasks/{args.task_id}/reprocess", json=body)).json()
            if not args.wait:
                _print(
                    answer,
                    args.json,
                    f"task {answer['task_id']} queued again (generation {answer['generation']})",
                )
                return 0
            status = await _task_end(http, args.task_id)
            report.task(sys.stdout, status, args.url, as_json=args.json)
            return 0 if status["status"] == "done" else 1
        body["where"] = _where_body(args.where)
        if args.max_in_flight is not None:
            body["max_in_flight"] = args.max_in_flight
        job = checked(await http.post("/tasks/reprocess", json=body)).json()
        if not args.follow:
            _print_job(job, args.json)
            return 0
        return await _follow(http, job["job_id"], args.json)


async def jobs(args: argparse.Namespace) -> int:
    async with make_client(args.url, args.api_key, connections=1) as http:
        if args.action == "list":
            items = checked(await http.get("/jobs")).json()["items"]
            if args.json:
                report.write_json(sys.stdout, items)
            else:
                report.table(
                    sys.stdout,
                    ("JOB", "STATE", "MATCHED", "QUEUED", "DONE", "FAILED", "SKIPPED"),
                    [
                        (
                            j["job_id"],
                            j["state"],
                            j["matched"],
                            j["queued"],
                            j["done"],
                            j["failed"],
                            j["skipped"],
                        )
                        for j in items
                    ],
                )
            return 0
        if args.job_id is None:
            raise UsageError(f"jobs {args.action} needs a job ID")
        if args.action == "follow":
            return await _follow(http, args.job_id, args.json)
        if args.action == "show":
            job = checked(await http.get(f"/jobs/{args.job_id}")).json()
        else:
            job = checked(await http.post(f"/jobs/{args.job_id}/{args.action}")).json()
        _print_job(job, args.json)
        return 0


async def _task_end(http: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    while True:
        status = checked(await http.get(f"/status/{task_id}")).json()
        if status["status"] in FINAL_TASK:
            return status
        await asyncio.sleep(POLL_SECONDS)


async def _follow(http: httpx.AsyncClient, job_id: int, as_json: bool) -> int:
    """Poll the job until it has ended and nothing of it is in flight, a line on stderr per change."""
    last = ""
    started = time.monotonic()
    while True:
        job = checked(await http.get(f"/jobs/{job_id}")).json()
        line = _progress_line(job)
        if line != last:
            sys.stderr.write(f"[{time.monotonic() - started:5.0f} s] {line}\n")
            last = line
        if job["state"] in FINAL_JOB and job["in_flight"] == 0:
            _print_job(job, as_json)
            return 0 if job["state"] == "done" and job["failed"] == 0 else 1
        await asyncio.sleep(POLL_SECONDS)


def _progress_line(job: dict[str, Any]) -> str:
    return (
        f"job {job['job_id']} {job['state']}: {job['matched']} matched, {job['queued']} queued, "
        f"{job['done']} done, {job['failed']} failed, {job['skipped']} skipped, {job['in_flight']} in flight"
    )


def _print_job(job: dict[str, Any], as_json: bool) -> None:
    _print(job, as_json, _progress_line(job))


def _print(body: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        report.write_json(sys.stdout, body)
    else:
        sys.stdout.write(line + "\n")
