"""STREAM_REPLICAS and CONSUMER_REPLICAS: validated at start-up, applied to a real three-node cluster.

Replicas only go up on their own: an existing stream is scaled up to the configured count, and
one with more replicas than configured is left alone (a process configured differently, or an old
one during a rolling change, must not take redundancy away).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from config import ConfigError, load_settings
from core import queue
from devstack.servers import LocalNats, LocalNatsCluster, free_port
from devstack.stack import start_worker, stop_process
from tests.waiting import eventually

# JetStream's "consumer config replicas must match interest retention stream's replicas".
CONSUMER_REPLICAS_MUST_MATCH = 10134


@pytest.fixture
async def nc(nats_cluster: LocalNatsCluster) -> AsyncIterator[NATS]:
    connection = await queue.connect(nats_cluster.url, name="test")
    yield connection
    await connection.close()


async def _peers(nc: NATS, *, consumer: bool) -> list[str]:
    """The nodes following the stream's (or the consumer's) leader, once they are current."""
    js = nc.jetstream()
    info = await (js.consumer_info(queue.STREAM, queue.DURABLE) if consumer else js.stream_info(queue.STREAM))
    if info.cluster is None:
        return []  # mid-change (a consumer being moved to its new peers) the server may show none
    return sorted(peer.name for peer in info.cluster.replicas or [] if peer.current)


async def test_a_new_stream_and_its_consumer_live_on_as_many_nodes_as_configured(nc: NATS) -> None:
    js = nc.jetstream()

    assert await queue.ensure_stream(js, 3) == 3
    await queue.ensure_consumer(js, queue.ConsumerPolicy(ack_wait_seconds=5))

    stream = await js.stream_info(queue.STREAM)
    assert stream.config.num_replicas == 3
    assert stream.cluster is not None and stream.cluster.leader is not None

    async def both_replicated() -> bool:
        return len(await _peers(nc, consumer=False)) == len(await _peers(nc, consumer=True)) == 2

    await eventually(both_replicated, timeout=20, what="stream and consumer with two current followers")


async def test_an_existing_single_replica_stream_is_scaled_up_with_its_messages(nc: NATS) -> None:
    js = nc.jetstream()
    await queue.ensure_stream(js, 1)
    await queue.ensure_consumer(js, queue.ConsumerPolicy(ack_wait_seconds=5))
    for task_id in range(1, 6):
        await queue.publish_task(js, task_id)

    assert await queue.ensure_stream(js, 3) == 3

    stream = await js.stream_info(queue.STREAM)
    assert (stream.config.num_replicas, stream.state.messages) == (3, 5)

    # JetStream copies the stream to the new peers, then the consumer (left at 0 replicas) follows.
    async def consumer_replicated() -> bool:
        return len(await _peers(nc, consumer=True)) == 2

    await eventually(consumer_replicated, timeout=40, what="the consumer following the stream to 3 nodes")
    assert (await js.stream_info(queue.STREAM)).state.messages == 5


async def test_a_stream_with_more_replicas_than_configured_is_left_alone(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await queue.ensure_stream(js, 3)

    with caplog.at_level(logging.WARNING, logger=queue.__name__):
        assert await queue.ensure_stream(js, 1) == 3

    assert (await js.stream_info(queue.STREAM)).config.num_replicas == 3
    assert "has 3 replicas, more than the 1 configured" in caplog.text


async def test_consumer_replicas_other_than_the_streams_are_refused_loudly(nc: NATS) -> None:
    """Why config.py accepts only 0 or STREAM_REPLICAS for CONSUMER_REPLICAS."""
    js = nc.jetstream()
    await queue.ensure_stream(js, 3)

    with pytest.raises(APIError) as refused:
        await queue.ensure_consumer(js, queue.ConsumerPolicy(ack_wait_seconds=5, replicas=1))

    assert refused.value.err_code == CONSUMER_REPLICAS_MUST_MATCH
    assert queue.is_misconfiguration(refused.value)
    await queue.ensure_consumer(js, queue.ConsumerPolicy(ack_wait_seconds=5, replicas=3))


async def test_more_replicas_than_the_cluster_has_nodes_stop_start_up_loudly(nc: NATS) -> None:
    with pytest.raises(APIError) as refused:
        await queue.ensure_stream(nc.jetstream(), 5)

    assert queue.is_misconfiguration(refused.value)


async def test_replicas_on_a_server_that_is_not_clustered_stop_start_up_loudly(tmp_path: Path) -> None:
    single = LocalNats(tmp_path / "single", free_port())
    single.start()
    try:
        connection = await queue.connect(single.url, name="test")
        try:
            with pytest.raises(APIError, match="non-clustered") as refused:
                await queue.ensure_stream(connection.jetstream(), 3)
            assert queue.is_misconfiguration(refused.value)
        finally:
            await connection.close()
    finally:
        single.stop()


async def test_a_worker_asked_for_replicas_a_single_server_cannot_give_exits_1_and_says_why(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    single = LocalNats(tmp_path / "single", free_port())
    single.start()
    log_file = tmp_path / "worker.log"
    try:
        process = start_worker(
            {**stack_env, "NATS_URL": single.url, "STREAM_REPLICAS": "3"}, log_file=log_file
        )
        try:
            exit_code = await asyncio.to_thread(process.wait, 30)
        finally:
            stop_process(process)
    finally:
        single.stop()

    assert exit_code == 1
    assert "replicas > 1 not supported in non-clustered mode" in log_file.read_text()


# --- settings ----------------------------------------------------------------------------------------


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("STREAM_REPLICAS", "CONSUMER_REPLICAS"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(empty))
    return monkeypatch


def test_replicas_default_to_a_single_node(settings_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()

    assert (settings.stream_replicas, settings.consumer_replicas) == (1, 0)


@pytest.mark.parametrize(("stream", "consumer"), [("3", "0"), ("3", "3"), ("5", "5"), ("1", "1")])
def test_consumer_replicas_may_be_zero_or_the_streams(
    settings_env: pytest.MonkeyPatch, stream: str, consumer: str
) -> None:
    settings_env.setenv("STREAM_REPLICAS", stream)
    settings_env.setenv("CONSUMER_REPLICAS", consumer)

    settings = load_settings()

    assert (settings.stream_replicas, settings.consumer_replicas) == (int(stream), int(consumer))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAM_REPLICAS", "0"),
        ("STREAM_REPLICAS", "6"),
        ("STREAM_REPLICAS", "three"),
        ("STREAM_REPLICAS", "true"),
        ("CONSUMER_REPLICAS", "-1"),
        ("CONSUMER_REPLICAS", "6"),
        ("CONSUMER_REPLICAS", "1.5"),
        ("CONSUMER_REPLICAS", "3"),  # the stream has 1: JetStream would refuse it (error 10134)
    ],
)
def test_a_bad_replica_count_fails_with_the_setting_named(
    settings_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    settings_env.setenv(name, value)

    with pytest.raises(ConfigError, match=name):
        load_settings()
