"""A worker's Prometheus metrics: what `task_finished` records, and a real worker process serving
its in-flight gauge on WORKER_METRICS_PORT."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import config
from config import PROJECT_ROOT
from core.models import ImageTask
from devstack.servers import free_port
from devstack.stack import start_worker, stop_process
from tests import images
from tests.waiting import eventually, final_status
from worker.metrics import PROCESSING_BUCKETS, MetricsPortInUse, WorkerMetrics


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_task_finished_counts_by_status_and_preset_and_times_by_preset() -> None:
    metrics = WorkerMetrics()

    metrics.task_finished(status="done", preset="thumbnail", seconds=0.004)
    metrics.task_finished(status="done", preset="thumbnail", seconds=0.3)
    metrics.task_finished(status="failed", preset="thumbnail", seconds=45.0)
    metrics.task_finished(status="done", preset="default", seconds=2.0)

    found = samples(generate_latest(metrics.registry).decode())
    assert value(found, "imagequeue_tasks_finished_total", status="done", preset="thumbnail") == 2
    assert value(found, "imagequeue_tasks_finished_total", status="failed", preset="thumbnail") == 1
    assert value(found, "imagequeue_tasks_finished_total", status="done", preset="default") == 1
    histogram = "imagequeue_processing_seconds"
    assert value(found, f"{histogram}_count", preset="thumbnail") == 3
    assert value(found, f"{histogram}_sum", preset="thumbnail") == pytest.approx(45.304)
    assert value(found, f"{histogram}_bucket", preset="thumbnail", le="0.005") == 1
    assert value(found, f"{histogram}_bucket", preset="thumbnail", le="0.5") == 2
    assert value(found, f"{histogram}_bucket", preset="thumbnail", le="30.0") == 2
    assert value(found, f"{histogram}_bucket", preset="thumbnail", le="60.0") == 3
    assert value(found, f"{histogram}_bucket", preset="default", le="2.5") == 1
    assert (PROCESSING_BUCKETS[0], PROCESSING_BUCKETS[-1]) == (0.005, 60.0)


async def test_in_flight_counts_messages_being_handled_and_the_server_answers() -> None:
    metrics = WorkerMetrics()
    port = metrics.serve(0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            with metrics.handling(), metrics.handling():
                during = samples((await http.get("/metrics")).text)
            after = samples((await http.get("/metrics")).text)
    finally:
        metrics.close()

    assert value(during, "imagequeue_worker_in_flight") == 2
    assert value(after, "imagequeue_worker_in_flight") == 0
    assert ("process_cpu_seconds_total", frozenset()) in after, "process metrics come along"


def test_a_taken_port_is_refused_in_words() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortInUse, match=f"port {port}.*its own WORKER_METRICS_PORT"):
            WorkerMetrics().serve(port)


async def test_a_worker_process_serves_its_in_flight_gauge_while_it_handles_a_task(
    client: httpx.AsyncClient, db: AsyncSession, stack_env: dict[str, str], workdir: Path
) -> None:
    port = free_port()
    log_file = workdir / "metrics-worker.log"
    uploaded = await client.post("/upload", files={"file": ("m.jpg", images.jpeg(), "image/jpeg")})
    task_id = uploaded.json()["task_id"]
    # Hold the task's row: the worker's claim (an UPDATE of that row) waits, so its message stays
    # in flight for as long as this transaction is open, however fast the machine.
    await db.execute(select(ImageTask.id).where(ImageTask.id == task_id).with_for_update())
    process = start_worker({**stack_env, "WORKER_METRICS_PORT": str(port)}, log_file=log_file)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def in_flight(condition: str) -> bool:
                assert process.poll() is None, log_file.read_text()[-3000:]
                try:
                    found = samples((await http.get("/metrics")).text)
                except httpx.TransportError:
                    return False  # not listening yet
                gauge = value(found, "imagequeue_worker_in_flight")
                return gauge >= 1 if condition == "busy" else gauge == 0

            await eventually(lambda: in_flight("busy"), timeout=30, what="the worker's in-flight gauge at 1+")
            await db.rollback()  # let the claim through
            status = await final_status(client, task_id)
            assert status["status"] == "done", status["error"]
            await eventually(lambda: in_flight("idle"), timeout=30, what="the in-flight gauge back at 0")
            found = samples((await http.get("/metrics")).text)
            assert value(found, "imagequeue_tasks_finished_total", status="done", preset="default") >= 1
            assert value(found, "imagequeue_processing_seconds_count", preset="default") >= 1
    finally:
        await db.rollback()
        assert stop_process(process) == 0, log_file.read_text()[-3000:]


async def test_a_worker_whose_metrics_port_is_taken_exits_1_and_says_why(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    log_file = tmp_path / "worker.log"
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_worker({**stack_env, "WORKER_METRICS_PORT": str(port)}, log_file=log_file)
        try:
            exit_code = await asyncio.to_thread(process.wait, 30)
        finally:
            stop_process(process)

    assert exit_code == 1
    assert f"cannot serve metrics on port {port}" in log_file.read_text()


def test_the_compose_worker_exposes_the_port_it_serves_metrics_on() -> None:
    worker = yaml.safe_load((PROJECT_ROOT / "docker-compose.example.yml").read_text())["services"]["worker"]
    port = int(worker["environment"].get("WORKER_METRICS_PORT", config._DEFAULTS["WORKER_METRICS_PORT"]))

    assert [str(port)] == [str(exposed) for exposed in worker["expose"]]
    assert "ports" not in worker, "publishing a host port would stop `--scale worker=3`"
