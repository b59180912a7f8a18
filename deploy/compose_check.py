"""Run the Compose deployments for real and check what a user of them relies on (`make test-compose`,
or `python -m deploy.compose_check` from the repository root).

With our unchanged Dockerfiles and Compose files, for docker-compose.example.yml: build, `up -d`, every
health check healthy and the `migrate` one-shot exited 0; an upload through the published API port
reaches `done` and its processed image is served; the worker stopped in the middle of a batch exits 0
(it finished its images within its grace period), and neither that nor a restart of `nats` loses an
accepted upload; the app containers run as the image's non-root user with a
read-only root and no capabilities; the named volumes keep tasks across `down` / `up`. For
docker-compose.cluster.yml (three NATS nodes, two APIs, three workers, images in NATS): a batch with one
NATS container killed in the middle ends with every accepted upload `done`, once. For
docker-compose.s3.yml (images in a SeaweedFS S3 gateway, no shared volume): a batch with the gateway
stopped while the worker holds tasks (an upload meanwhile is 503) and started again: every accepted
upload ends `done`, its image served from the bucket.
Each run ends with `down -v`, and nothing of it is left.

Traffic stays on this machine: the only file added to ours is a network option that binds the published
ports to 127.0.0.1, and the host talks to the API through them. Runs on the Docker host itself (it reads
the containers' processes in /proc) and needs the daemon and the base images (deploy/docker-host.sh and
deploy/local-images.sh, which `make test-compose` runs first).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from core.queue import STREAM

ROOT = Path(__file__).resolve().parent.parent
# The uid and gid Dockerfile.api and Dockerfile.worker give their process.
APP_UID = 10001
# Project names of their own, so a run never touches a stack a developer started from the same files.
PROJECT_PREFIX = "imagequeue-check"
LOOPBACK_OVERRIDE = """\
# Added by deploy/compose_check.py: the stack's published ports bind to 127.0.0.1 only.
networks:
  default:
    driver_opts:
      com.docker.network.bridge.host_binding_ipv4: "127.0.0.1"
"""
# Generous: a stack on a 2-core CI machine shared with its own builds. Every wait polls.
START_TIMEOUT = 240.0
DONE_TIMEOUT = 300.0
# Uploads of one batch at most, however long its disruptions take.
BATCH_CAP = 200
_started = time.monotonic()


class CheckFailed(Exception):
    """What the deployment did differs from what the check expects."""


def say(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", flush=True)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(argv: list[str], *, env: dict[str, str] | None = None) -> str:
    """Run a command and return its output; the output is shown only when it fails (Compose reports its
    progress on stderr)."""
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CheckFailed(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def compose_implementations() -> list[list[str]]:
    """Every Compose on this machine: the v2 plugin (`docker compose`) first, then docker-compose 1.x."""
    found = []
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if not found:
        raise CheckFailed("no Compose here: neither `docker compose` nor docker-compose")
    return found


def poll(what: str, ready: Callable[[], bool], timeout: float, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class Stack:
    """One Compose project: our file plus the loopback override, under a project name of the check's."""

    compose: list[str]
    file: str
    project: str
    override: Path
    env: dict[str, str]

    def run(self, *args: str) -> str:
        return run(
            [*self.compose, "-p", self.project, "-f", self.file, "-f", str(self.override), *args],
            env=self.env,
        )

    def containers(self, service: str | None = None, *, running_only: bool = False) -> list[dict[str, Any]]:
        """`docker inspect` of the project's containers, read through the labels both Composes set."""
        argv = [
            "docker",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
        ]
        if not running_only:
            argv.append("-a")
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = run(argv).split()
        return json.loads(run(["docker", "inspect", *ids])) if ids else []

    def volumes_in_use(self) -> set[str]:
        """Every volume the project's containers mount, the anonymous ones (which carry no project label)
        included."""
        return {
            mount["Name"]
            for container in self.containers()
            for mount in container["Mounts"]
            if mount["Type"] == "volume"
        }

    def leftovers(self, volumes: set[str]) -> dict[str, list[str]]:
        """What is left of the project: containers, networks and volumes by label, and which of the
        given volumes still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        existing = set(run(["docker", "volume", "ls", "-q"]).split())
        found = {
            kind: names
            for kind, argv in (
                ("containers", ["docker", "ps", "-aq", "--filter", label]),
                ("volumes", ["docker", "volume", "ls", "-q", "--filter", label]),
                ("networks", ["docker", "network", "ls", "-q", "--filter", label]),
            )
            if (names := run(argv).split())
        }
        if volumes & existing:
            found["mounted volumes"] = sorted(volumes & existing)
        return found

    def down(self, *, volumes: bool) -> None:
        self.run("down", "--remove-orphans", *(["-v"] if volumes else []))

    def show_logs(self) -> None:
        """The last lines of every container, for a failed run's reader."""
        for container in self.containers():
            name = container["Name"].lstrip("/")
            state = container["State"]
            health = state.get("Health", {}).get("Status", "-")
            print(f"--- {name}: {state['Status']} (exit {state['ExitCode']}, health {health})", flush=True)
            logs = subprocess.run(["docker", "logs", "--tail", "25", name], capture_output=True, text=True)
            print((logs.stdout + logs.stderr).rstrip(), flush=True)


def service_of(container: dict[str, Any]) -> str:
    return str(container["Config"]["Labels"]["com.docker.compose.service"])


def wait_until_up(stack: Stack, replicas: dict[str, int], one_shots: set[str]) -> list[dict[str, Any]]:
    """Every long-running container healthy by its own health check, in the numbers given, and every
    one-shot exited 0. A container that exits, restarts or has no health check fails the check at once."""

    def settled() -> bool:
        containers = stack.containers()
        for container in containers:
            state, name = container["State"], container["Name"].lstrip("/")
            if service_of(container) in one_shots:
                expect(
                    state["Status"] != "exited" or state["ExitCode"] == 0,
                    f"{name} exited {state['ExitCode']}",
                )
            else:
                expect(state["Status"] not in ("exited", "dead"), f"{name} is {state['Status']}")
                expect(container["RestartCount"] == 0, f"{name} restarted {container['RestartCount']} times")
                expect("Health" in state, f"{name} has no health check")
                expect(state["Health"]["Status"] != "unhealthy", f"{name} is unhealthy")
        done_shots = {
            service_of(c)
            for c in containers
            if service_of(c) in one_shots and c["State"]["Status"] == "exited"
        }
        ready: dict[str, int] = {}
        for container in containers:
            state = container["State"]
            if state["Status"] == "running" and state.get("Health", {}).get("Status") == "healthy":
                ready[service_of(container)] = ready.get(service_of(container), 0) + 1
        return done_shots == one_shots and all(
            ready.get(name, 0) == count for name, count in replicas.items()
        )

    poll("every service healthy and the one-shots finished", settled, START_TIMEOUT)
    containers = stack.containers(running_only=True)
    counts = {name: sum(service_of(c) == name for c in containers) for name in replicas}
    expect(counts == replicas, f"running containers per service: {counts}, expected {replicas}")
    return containers


def stop_gracefully(stack: Stack, *services: str) -> None:
    """`stop` (all services when none is named); each app container must exit 0: it finished its work
    within the stop grace period instead of being killed (137) at its end."""
    stack.run("stop", *services)
    for container in stack.containers():
        name, state = container["Name"].lstrip("/"), container["State"]
        if service_of(container) in ("api", "worker") and (not services or service_of(container) in services):
            expect(state["Status"] == "exited", f"{name} is {state['Status']} after stop")
            expect(state["ExitCode"] == 0, f"{name} exited {state['ExitCode']} on stop (137: killed)")


def restart_gracefully(stack: Stack, service: str) -> None:
    stop_gracefully(stack, service)
    stack.run("start", service)


def nats_stream_leader(stack: Stack, nodes: list[str]) -> str:
    """The NATS container that last became leader of the task stream, as its own log says."""
    marker = f"new stream leader for '$G > {STREAM}'"
    latest: dict[str, str] = {}
    for node in nodes:
        for container in stack.containers(node, running_only=True):
            name = container["Name"].lstrip("/")
            logs = subprocess.run(["docker", "logs", "--timestamps", name], capture_output=True, text=True)
            stamps = [line.split()[0] for line in (logs.stdout + logs.stderr).splitlines() if marker in line]
            if stamps:
                latest[name] = max(stamps)
    expect(bool(latest), f"no NATS node logged {marker!r}")
    return max(latest, key=lambda name: latest[name])


def api_addresses(containers: list[dict[str, Any]]) -> list[str]:
    """Base URLs of the API containers' published ports; every published port must be on 127.0.0.1."""
    urls = []
    for container in containers:
        for port, bindings in (container["NetworkSettings"]["Ports"] or {}).items():
            for binding in bindings or []:
                expect(
                    binding["HostIp"] == "127.0.0.1",
                    f"{container['Name']} publishes {port} on {binding['HostIp'] or 'every address'}",
                )
                if service_of(container) == "api" and port == "8000/tcp":
                    urls.append(f"http://127.0.0.1:{binding['HostPort']}")
    api_count = sum(service_of(c) == "api" for c in containers)
    expect(len(urls) == api_count, f"{api_count} api containers but published ports {urls}")
    return sorted(urls)


def check_hardening(containers: list[dict[str, Any]]) -> None:
    """The app containers' processes run as the image's user, on a read-only root, with no capabilities
    and no way to gain privileges: read from the running processes and the daemon, not from the files."""
    apps = [c for c in containers if service_of(c) in ("api", "worker")]
    expect(bool(apps), "no api or worker container to check")
    for container in apps:
        name, host = container["Name"].lstrip("/"), container["HostConfig"]
        status = Path(f"/proc/{container['State']['Pid']}/status").read_text()
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        gids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
        expect(
            set(uids) == {str(APP_UID)} and set(gids) == {str(APP_UID)},
            f"{name} runs as uid {uids} gid {gids}",
        )
        expect(host["ReadonlyRootfs"] is True, f"{name}: root file system is writable")
        expect(host["CapDrop"] == ["ALL"] and not host["CapAdd"], f"{name}: capabilities {host['CapDrop']}")
        expect(
            any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"] or []),
            f"{name}: security options {host['SecurityOpt']}",
        )
    say(f"{len(apps)} api/worker containers run as uid {APP_UID}, read-only, without capabilities")


def sample_image() -> bytes:
    """A JPEG large enough (noise, 4 megapixels) that a batch of them keeps the workers busy for seconds."""
    picture = Image.merge("RGB", [Image.effect_noise((2400, 1800), 60 + 20 * band) for band in range(3)])
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class Uploads:
    """Uploads through the published API ports, spread over every API replica."""

    urls: list[str]
    image: bytes
    accepted: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, index: int = 0) -> httpx.Client:
        # trust_env=False: a proxy in the environment must not carry loopback traffic anywhere.
        return httpx.Client(base_url=self.urls[index % len(self.urls)], timeout=30, trust_env=False)

    def one(self, index: int) -> int | None:
        try:
            with self.client(index) as client:
                response = client.post(
                    "/upload", files={"file": (f"check-{index}.jpg", self.image, "image/jpeg")}
                )
        except httpx.TransportError as exc:
            with self._lock:
                self.refused.append(f"#{index}: {type(exc).__name__}")
            return None
        with self._lock:
            if response.status_code == 200:
                self.accepted.append(int(response.json()["task_id"]))
                return self.accepted[-1]
            self.refused.append(f"#{index}: {response.status_code} {response.text[:120]}")
        return None

    def batch(self, minimum: int, disruptions: list[tuple[int, str, Callable[[], None]]]) -> list[int]:
        """Uploads from four threads that go on until every disruption is over and `minimum` were made
        (at most BATCH_CAP); each disruption runs once `after` uploads of the batch were accepted. The
        accepted task ids are returned."""
        ids: list[int] = []
        lock = threading.Lock()
        numbers = itertools.count()
        disrupted = threading.Event()

        def uploader() -> None:
            while (index := next(numbers)) < BATCH_CAP and not (disrupted.is_set() and index >= minimum):
                if (task_id := self.one(index)) is not None:
                    with lock:
                        ids.append(task_id)

        refused_before = len(self.refused)
        with ThreadPoolExecutor(4) as pool:
            threads = [pool.submit(uploader) for _ in range(4)]
            try:
                for after, what, disrupt in disruptions:
                    poll(f"{after} accepted uploads", lambda after=after: len(ids) >= after, 120, 0.1)
                    accepted = len(ids)
                    say(f"{what}: {accepted} uploads accepted, {self.not_done()} tasks not done yet")
                    disrupt()
                    say(f"{what}: over; {len(ids) - accepted} uploads accepted meanwhile")
            finally:
                disrupted.set()
            for thread in threads:
                thread.result()
        refused = self.refused[refused_before:]
        say(f"batch: {len(ids)} uploads accepted, {len(refused)} refused")
        for refusal in refused:
            print(f"    refused {refusal}", flush=True)
        expect(len(ids) >= len(refused), "most uploads of the batch were refused")
        return ids

    def statuses(self) -> dict[int, dict[str, Any]]:
        """Every task the API lists (newest first, paged)."""
        found: dict[int, dict[str, Any]] = {}
        cursor: int | None = None
        with self.client() as client:
            while True:
                params: dict[str, int] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
                page = client.get("/tasks", params=params).raise_for_status().json()
                found.update({item["task_id"]: item for item in page["items"]})
                cursor = page["next_cursor"]
                if cursor is None:
                    return found

    def not_done(self) -> int:
        try:
            return sum(task["status"] != "done" for task in self.statuses().values())
        except httpx.HTTPError:
            return -1

    def wait_all_done(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Every given task `done` (a `failed` one fails the check), and each processed image served."""
        latest: dict[int, dict[str, Any]] = {}

        def all_done() -> bool:
            try:
                latest.update(self.statuses())
            except httpx.HTTPError:
                return False  # an API replica restarting; the deadline decides
            failed = {i: latest[i]["error"] for i in ids if i in latest and latest[i]["status"] == "failed"}
            expect(not failed, f"tasks failed: {failed}")
            return all(i in latest and latest[i]["status"] == "done" for i in ids)

        poll(f"{len(ids)} tasks done", all_done, DONE_TIMEOUT)
        with self.client() as client:
            for task_id in ids:
                check_served(client, latest[task_id])
        return latest


def check_served(client: httpx.Client, task: dict[str, Any]) -> None:
    """The processed image of a done task is served, decodes, and has the size the task reports."""
    output = task["outputs"][0]
    response = client.get(task["processed_url"])
    expect(response.status_code == 200, f"{task['processed_url']}: {response.status_code}")
    expect(
        response.headers["content-type"] == output["content_type"], f"{task['processed_url']}: content type"
    )
    with Image.open(io.BytesIO(response.content)) as served:
        expect(
            served.size == (output["width"], output["height"]), f"{task['processed_url']}: size {served.size}"
        )


@contextmanager
def stack_of(
    compose: list[str], file: str, override: Path, keep: bool, settings: dict[str, str] | None = None
) -> Iterator[Stack]:
    """A stack built and started from `file` (with `settings` in the environment Compose reads the
    file's `${...}` from); always `down -v` afterwards (unless --keep), with the containers' last log
    lines when the check failed."""
    name = f"{PROJECT_PREFIX}-{Path(file).stem.split('.')[-1]}"
    # A password of the run's own, so the postgres image's first-start contract is really exercised.
    env = {**os.environ, **(settings or {}), "POSTGRES_PASSWORD": secrets.token_hex(12)}
    # The classic builder unless told otherwise: BuildKit first fetches the Dockerfiles'
    # `# syntax=docker/dockerfile:1` frontend from a registry, which CI here cannot reach (the classic
    # builder ignores the line). A user's `docker compose up --build` uses BuildKit.
    env.setdefault("DOCKER_BUILDKIT", "0")
    stack = Stack(compose=compose, file=file, project=name, override=override, env=env)
    stack.down(volumes=True)  # what a killed earlier run may have left
    try:
        say(f"{file}: build (project {name})")
        stack.run("build")
        say(f"{file}: up -d")
        stack.run("up", "-d")
        yield stack
    except BaseException:
        stack.show_logs()
        raise
    finally:
        if not keep:
            mounted = stack.volumes_in_use()
            stack.down(volumes=True)
            left = stack.leftovers(mounted)
            expect(not left, f"{file}: `down -v` left {left}")
            say(f"{file}: down -v, nothing left")


def check_example(compose: list[str], override: Path, image: bytes, keep: bool) -> None:
    file = "docker-compose.example.yml"
    replicas = {"postgres": 1, "nats": 1, "api": 1, "worker": 1}
    with stack_of(compose, file, override, keep) as stack:
        containers = wait_until_up(stack, replicas, {"migrate"})
        say(f"{file}: every service healthy, migrate exited 0")
        check_hardening(containers)
        uploads = Uploads(api_addresses(containers), image)
        first = uploads.one(0)
        expect(first is not None, f"the first upload was refused: {uploads.refused}")
        assert first is not None
        uploads.wait_all_done([first])
        say(f"{file}: upload {first} done, processed image served")

        batch = uploads.batch(
            40,
            [
                (8, "stop and start worker", lambda: restart_gracefully(stack, "worker")),
                (20, "restart nats", lambda: stack.run("restart", "nats")),
            ],
        )
        done = uploads.wait_all_done(uploads.accepted)
        say(f"{file}: all {len(batch)} accepted uploads of the batch done after the restarts")

        stop_gracefully(stack)
        stack.down(volumes=False)
        expect(not stack.containers(), "containers left after `down`")
        stack.run("up", "-d")
        wait_until_up(stack, replicas, {"migrate"})
        after = uploads.statuses()
        expect(set(after) == set(done), f"tasks after down/up: {sorted(after)}, before: {sorted(done)}")
        expect(all(task["status"] == "done" for task in after.values()), "a task is no longer done")
        with uploads.client() as client:
            check_served(client, after[first])
        say(f"{file}: down / up kept all {len(after)} tasks and their images")


def check_cluster(compose: list[str], override: Path, image: bytes, keep: bool) -> None:
    file = "docker-compose.cluster.yml"
    replicas = {"postgres": 1, "nats1": 1, "nats2": 1, "nats3": 1, "api": 2, "worker": 3}
    with stack_of(compose, file, override, keep) as stack:
        containers = wait_until_up(stack, replicas, {"migrate"})
        say(f"{file}: every service healthy (two APIs, three workers), migrate exited 0")
        check_hardening(containers)
        uploads = Uploads(api_addresses(containers), image)
        # The node leading the task stream: its loss moves the stream's leadership to another node.
        victim = nats_stream_leader(stack, ["nats1", "nats2", "nats3"])
        batch = uploads.batch(40, [(12, f"kill {victim}", lambda: run(["docker", "kill", victim]))])
        done = uploads.wait_all_done(batch)
        # Once: the tasks are exactly the accepted uploads, each done with its one image served.
        expect(set(done) == set(batch), f"tasks {sorted(done)}, accepted {sorted(batch)}")
        attempts = sorted({task["attempts"] for task in done.values()})
        say(f"{file}: all {len(batch)} accepted uploads done, once each (attempts seen: {attempts})")


def check_s3(compose: list[str], override: Path, image: bytes, keep: bool) -> None:
    file = "docker-compose.s3.yml"
    replicas = {"postgres": 1, "nats": 1, "s3": 1, "api": 1, "worker": 1}
    # This file runs its API as two processes (API_PROCESSES, as its comment tells users to set it),
    # so the supervisor runs in the shipped image: read-only root, /tmp a tmpfs, the app's own user.
    with stack_of(compose, file, override, keep, {"API_PROCESSES": "2"}) as stack:
        containers = wait_until_up(stack, replicas, {"migrate"})
        say(f"{file}: every service healthy (SeaweedFS S3 gateway included), migrate exited 0")
        check_hardening(containers)
        servers = [
            line
            for line in stack.run("top", "api").splitlines()
            if "api.serve" in line or "spawn_main" in line
        ]
        expect(len(servers) == 3, f"API_PROCESSES=2: expected the supervisor and 2 children, saw {servers}")
        uploads = Uploads(api_addresses(containers), image)
        before = [task_id for index in range(10) if (task_id := uploads.one(index)) is not None]
        expect(len(before) == 10, f"uploads refused before any fault: {uploads.refused}")
        # Stopped while the worker holds those tasks: it hands them back; an upload meanwhile is 503.
        stack.run("stop", "s3")
        expect(
            uploads.one(10) is None and " 503 " in uploads.refused[-1], f"with S3 stopped: {uploads.refused}"
        )
        say(f"{file}: S3 stopped with {uploads.not_done()} tasks not done; an upload got 503")
        stack.run("start", "s3")
        with uploads.client() as client:
            poll("the API's /ready after S3 started", lambda: client.get("/ready").status_code == 200, 120)
        after = [task_id for index in range(11, 21) if (task_id := uploads.one(index)) is not None]
        expect(len(after) == 10, f"uploads refused once S3 was back: {uploads.refused[1:]}")
        done = uploads.wait_all_done(before + after)
        expect(set(done) == set(before + after), f"tasks {sorted(done)}, accepted {sorted(before + after)}")
        with uploads.client() as client:
            for task in done.values():
                check_served(client, task)
        say(f"{file}: all {len(done)} accepted uploads done across an S3 stop, each image served")
        with uploads.client() as client:
            scrape = client.get("/metrics").text
        accepted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in scrape.splitlines()
            if line.startswith("imagequeue_uploads_total{") and 'outcome="accepted"' in line
        )
        expect(accepted == len(done), f"/metrics counts {accepted} accepted uploads of {len(done)}")
        say(f"{file}: two API processes; /metrics counts all {len(done)} accepted uploads once")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["example", "cluster", "s3"], help="run one of the files")
    parser.add_argument("--keep", action="store_true", help="leave the stack running (no `down -v`)")
    args = parser.parse_args()

    implementations = compose_implementations()
    # Each file must be valid for every Compose here, not only for the one that runs it.
    for compose in implementations:
        for file in ("docker-compose.example.yml", "docker-compose.cluster.yml", "docker-compose.s3.yml"):
            run([*compose, "-f", file, "config", "-q"])
    compose = implementations[0]
    valid_for = ", ".join(" ".join(c) for c in implementations)
    say(f"running with `{' '.join(compose)}`; every file valid for: {valid_for}")
    image = sample_image()
    with tempfile.TemporaryDirectory() as scratch:
        override = Path(scratch, "loopback.yml")
        override.write_text(LOOPBACK_OVERRIDE)
        try:
            if args.only in (None, "example"):
                check_example(compose, override, image, args.keep)
            if args.only in (None, "cluster"):
                check_cluster(compose, override, image, args.keep)
            if args.only in (None, "s3"):
                check_s3(compose, override, image, args.keep)
        except CheckFailed as exc:
            say(f"FAILED: {exc}")
            return 1
    say("compose check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
