"""Stream and consumer set-up on a real nats-server: idempotent, race-free, loud on real errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, RetentionPolicy, StorageType
from nats.js.errors import APIError, ServiceUnavailableError

from core import queue
from devstack.servers import LocalNats, free_port


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[LocalNats]:
    server = LocalNats(tmp_path / "js", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(fresh_nats: LocalNats) -> AsyncIterator[NATS]:
    connection = await queue.connect(fresh_nats.url, name="test")
    yield connection
    await connection.close()


async def test_every_process_can_ensure_the_stream_at_once(nc: NATS) -> None:
    js = nc.jetstream()
    policy = queue.ConsumerPolicy(ack_wait_seconds=7)

    await asyncio.gather(*(queue.ensure_stream(js) for _ in range(8)))
    await asyncio.gather(*(queue.ensure_consumer(js, policy) for _ in range(8)))

    stream = await js.stream_info(queue.STREAM)
    consumer = await js.consumer_info(queue.STREAM, queue.DURABLE)
    assert stream.config.subjects == [queue.SUBJECT]
    assert stream.config.storage == StorageType.FILE
    assert stream.config.retention == RetentionPolicy.WORK_QUEUE
    assert (consumer.config.ack_wait, consumer.config.max_deliver) == (7, -1)
    assert consumer.config.ack_policy == AckPolicy.EXPLICIT


async def test_an_outdated_stream_is_brought_up_to_date(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(
        name=queue.STREAM,
        subjects=[queue.SUBJECT],
        max_msg_size=4096,
        storage=StorageType.FILE,
        retention=RetentionPolicy.WORK_QUEUE,
    )

    await queue.ensure_stream(js)

    assert (await js.stream_info(queue.STREAM)).config.max_msg_size == 1024


async def test_a_stream_that_cannot_be_updated_stops_start_up_loudly(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(name=queue.STREAM, subjects=[queue.SUBJECT], retention=RetentionPolicy.LIMITS)

    with pytest.raises(APIError, match="retention"):
        await queue.ensure_stream(js)


async def test_a_repeated_publish_of_one_task_is_stored_once(nc: NATS) -> None:
    js = nc.jetstream()
    await queue.ensure_stream(js)

    for _ in range(3):
        await queue.publish_task(js, 41)
    await queue.publish_task(js, 42)

    assert (await js.stream_info(queue.STREAM)).state.messages == 2


async def test_a_server_without_jetstream_is_an_error_not_silence(tmp_path: Path) -> None:
    """ensure_stream must not swallow real errors (here: JetStream is not enabled)."""
    port = free_port()
    plain = LocalNats(tmp_path / "plain", port)
    plain.start(jetstream=False)
    try:
        connection = await nats.connect(plain.url)
        try:
            with pytest.raises((APIError, ServiceUnavailableError, nats.errors.NoRespondersError)):
                await queue.ensure_stream(connection.jetstream())
        finally:
            await connection.close()
    finally:
        plain.stop()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"17", 17),
        (b" 5\n", 5),
        (b"2147483647", 2**31 - 1),
        (b"abc", None),
        (b"-3", None),
        (b"0", None),
        (b"2147483648", None),
        (b"9" * 40, None),
    ],
)
def test_only_task_ids_are_accepted_from_the_queue(payload: bytes, expected: int | None) -> None:
    assert queue.parse_task_id(payload) == expected
