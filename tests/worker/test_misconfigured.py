"""Settings or a stream the worker cannot work with stop it loudly instead of looping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.js.api import RetentionPolicy

from core import queue
from devstack.servers import LocalNats, free_port
from devstack.stack import start_worker, stop_process


async def test_a_worker_facing_an_incompatible_stream_exits_1_and_says_why(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    server = LocalNats(tmp_path / "js", free_port())
    server.start()
    log_file = tmp_path / "worker.log"
    try:
        connection = await nats.connect(server.url)
        # Someone created the stream by hand, keeping every message (retention cannot be changed).
        await connection.jetstream().add_stream(
            name=queue.STREAM, subjects=[queue.SUBJECT], retention=RetentionPolicy.LIMITS
        )
        await connection.close()

        process = start_worker({**stack_env, "NATS_URL": server.url}, log_file=log_file)
        try:
            exit_code = await asyncio.to_thread(process.wait, 30)
        finally:
            stop_process(process)
    finally:
        server.stop()

    assert exit_code == 1
    assert "JetStream refused the stream or consumer" in log_file.read_text()


async def test_a_worker_with_an_unusable_watermark_image_exits_2_and_names_it(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "logo.png"
    log_file = tmp_path / "worker.log"
    env = {**stack_env, "WATERMARK_IMAGES": f'@json {{"logo": "{missing}"}}'}

    process = start_worker(env, log_file=log_file)
    try:
        exit_code = await asyncio.to_thread(process.wait, 30)
    finally:
        stop_process(process)

    assert exit_code == 2
    assert (
        f"invalid setting: WATERMARK_IMAGES: 'logo' ({missing}): No such file or directory"
        in log_file.read_text()
    )
