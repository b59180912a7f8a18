"""The whole system beyond one NATS server: a three-node JetStream cluster, two API processes and
three worker processes on this machine, all given NATS_URL listing the three nodes.

While uploads stream into both APIs, one node (a follower of the task stream) is stopped and
started again; once it has caught up, the node leading the stream is killed outright (SIGKILL, as
a crashed machine), after the workers' consumer has been made to be led from that node too, so
the crash takes both leaders at once. With STREAM_REPLICAS=3 the stream and its consumer keep a
quorum throughout, so every upload that got a 200 must end `done`, rendered and recorded exactly
once, at its first attempt: a failover may delay a task but must cost it nothing.

Storage is the `nats` backend, as in the cluster compose file: uploads and outputs live in object
store buckets replicated on the three nodes, and before the crash their streams are made to be led
from the doomed node too, so the crash also interrupts puts and reads of images. Each process has
its own scratch folders, as on separate hosts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncSession

from core import queue
from core.storage import Area
from core.storage.nats import BUCKETS
from devstack.servers import LocalNatsCluster, free_port
from devstack.stack import LocalServers, migrate, start_api, start_worker
from tests.conftest import TEST_SETTINGS
from tests.database import session_on
from tests.faults.burst import Burst, new_prefix
from tests.faults.outcome import assert_outputs_once, wait_until_done, wait_until_settled
from tests.faults.processes import Started, api_ready, worker_ready
from tests.waiting import eventually

REPLICAS = 3
API_COUNT = 2
WORKER_COUNT = 3
# Each API gets about 6 uploads a second: some 100 to 200 tasks in all (the more, the longer the
# election), which two shared cores render well within the test's time.
CLIENTS_PER_API = 2
PAUSE_SECONDS = 0.3
# The line a worker logs once a render is recorded (worker/consumer.py): how renders are counted.
_RECORDED_RENDER = re.compile(r"task (\d+) done: ")

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def cluster_database(servers: LocalServers) -> Iterator[str]:
    """A database of the test's own: the session's API process relays and sweeps rows of the
    session database, and must not publish this test's rows to the session's single NATS server."""
    name = f"imagequeue_cluster_{uuid.uuid4().hex[:8]}"
    servers.postgres.psql(f"CREATE DATABASE {name};")
    try:
        url = servers.postgres.url(name)
        migrate(url)
        yield url
    finally:
        servers.postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


@pytest.fixture
async def cluster_db(cluster_database: str) -> AsyncIterator[AsyncSession]:
    async with session_on(cluster_database) as session:
        yield session


@pytest.fixture
async def observer(nats_cluster: LocalNatsCluster) -> AsyncIterator[NATS]:
    """The test's own connection, for reading the stream's leader and peers."""
    connection = await queue.connect(nats_cluster.url, name="test-observer")
    yield connection
    await connection.close()


# The task stream and the two buckets' streams (core.storage.nats).
STREAMS = (queue.STREAM, *(f"OBJ_{bucket}" for bucket in BUCKETS.values()))


async def _stream_cluster(observer: NATS, stream: str = queue.STREAM) -> tuple[str | None, dict[str, bool]]:
    """(leader, {follower: current}) as the stream reports them; (None, {}) while it cannot answer."""
    try:
        info = await observer.jetstream().stream_info(stream)
    except Exception:  # no leader at this moment: the question is asked again
        return None, {}
    cluster = info.cluster
    assert cluster is not None, "the stream is not clustered"
    return cluster.leader, {peer.name: bool(peer.current) for peer in cluster.replicas or []}


async def _fully_replicated(observer: NATS, stream: str = queue.STREAM) -> tuple[str, list[str]]:
    """Wait until the stream has a leader and every follower is current; return (leader, followers)."""
    state: tuple[str | None, dict[str, bool]] = (None, {})

    async def replicated() -> bool:
        nonlocal state
        state = await _stream_cluster(observer, stream)
        leader, followers = state
        return leader is not None and len(followers) == REPLICAS - 1 and all(followers.values())

    await eventually(replicated, timeout=30, what=f"stream {stream} led, with every follower current")
    leader, followers = state
    assert leader is not None
    return leader, sorted(followers)


async def _lead_the_consumer_from(observer: NATS, node: str) -> None:
    """Move the consumer's leadership to `node` unless it is there already."""
    js = observer.jetstream()

    async def leader() -> str | None:
        try:
            return (await js.consumer_info(queue.STREAM, queue.DURABLE, timeout=2)).cluster.leader
        except Exception:  # mid-election: ask again
            return None

    stepdown = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{queue.STREAM}.{queue.DURABLE}"
    await _move_leadership(observer, stepdown, leader, node, what="the consumer")


async def _lead_the_stream_from(observer: NATS, stream: str, node: str) -> None:
    """Move a stream's leadership to `node` unless it is there already."""

    async def leader() -> str | None:
        return (await _stream_cluster(observer, stream))[0]

    stepdown = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
    await _move_leadership(observer, stepdown, leader, node, what=f"stream {stream}")


async def _move_leadership(
    observer: NATS, stepdown: str, leader: Callable[[], Awaitable[str | None]], node: str, *, what: str
) -> None:
    """JetStream's leader stepdown with `node` as the preferred placement, until `node` leads."""

    async def led_from_node() -> bool:
        current = await leader()
        if current == node:
            return True
        if current is not None:
            with contextlib.suppress(Exception):
                await observer.request(
                    stepdown, json.dumps({"placement": {"preferred": node}}).encode(), timeout=2
                )
        return False

    await eventually(led_from_node, timeout=30, what=f"{what} led from {node}")


async def _stored_outputs(observer: NATS) -> dict[str, bytes]:
    """Every object in the processed bucket, by name (a few hundred small images)."""
    store = await observer.jetstream().object_store(BUCKETS[Area.PROCESSED])
    names = [info.name for info in await store.list(ignore_deletes=True)]
    return {name: (await store.get(name)).data or b"" for name in names}


def _renders(workers: list[Started]) -> collections.Counter[int]:
    text = "".join(worker.log_file.read_text(errors="replace") for worker in workers)
    return collections.Counter(int(task_id) for task_id in _RECORDED_RENDER.findall(text))


async def test_every_accepted_upload_is_done_once_across_a_node_stop_and_a_leader_crash(
    nats_cluster: LocalNatsCluster,
    observer: NATS,
    cluster_database: str,
    cluster_db: AsyncSession,
    tmp_path: Path,
) -> None:
    js = observer.jetstream()
    await queue.ensure_stream(js, REPLICAS)
    await queue.ensure_consumer(
        js, queue.ConsumerPolicy(ack_wait_seconds=float(TEST_SETTINGS["ACK_WAIT_SECONDS"]))
    )
    await _fully_replicated(observer)

    # Every process gets all three nodes, as in docker-compose.cluster.yml, and scratch folders of its
    # own (nothing shared but NATS and PostgreSQL).
    env = {
        **TEST_SETTINGS,
        "DATABASE_URL": cluster_database,
        "NATS_URL": nats_cluster.url,
        "STREAM_REPLICAS": str(REPLICAS),
        "STORAGE_BACKEND": "nats",
    }

    def scratch(process: str) -> dict[str, str]:
        return {
            "UPLOADS_DIR": str(tmp_path / process / "uploads"),
            "PROCESSED_DIR": str(tmp_path / process / "processed"),
        }

    ports = [free_port() for _ in range(API_COUNT)]
    apis = [
        Started(
            start_api({**env, **scratch(f"api-{index}")}, port, log_file=tmp_path / f"api-{index}.log"),
            tmp_path / f"api-{index}.log",
        )
        for index, port in enumerate(ports)
    ]
    workers = [
        Started(
            start_worker({**env, **scratch(f"worker-{index}")}, log_file=tmp_path / f"worker-{index}.log"),
            tmp_path / f"worker-{index}.log",
        )
        for index in range(WORKER_COUNT)
    ]
    try:
        base_urls = [f"http://127.0.0.1:{port}" for port in ports]
        await asyncio.gather(
            *(api_ready(api, url) for api, url in zip(apis, base_urls, strict=True)),
            *(worker_ready(worker) for worker in workers),
        )
        prefix = new_prefix("cluster")
        async with (
            Burst(base_urls[0], f"{prefix}-a", concurrency=CLIENTS_PER_API, pause=PAUSE_SECONDS) as first,
            Burst(base_urls[1], f"{prefix}-b", concurrency=CLIENTS_PER_API, pause=PAUSE_SECONDS) as second,
        ):
            bursts = (first, second)

            async def more(count: int) -> None:
                await asyncio.gather(*(burst.wait_for_more(count, timeout=40) for burst in bursts))

            await more(8)
            _, followers = await _fully_replicated(observer)
            follower = nats_cluster.node(followers[0])
            await asyncio.to_thread(follower.stop)
            await more(8)
            await asyncio.to_thread(follower.start)
            leader, _ = await _fully_replicated(observer)
            await _lead_the_consumer_from(observer, leader)
            for stream in STREAMS[1:]:
                await _fully_replicated(observer, stream)
                await _lead_the_stream_from(observer, stream, leader)
            assert (await _stream_cluster(observer))[0] == leader, "the stream's leader moved meanwhile"

            crashed = nats_cluster.node(leader)
            crashed_at = time.monotonic()
            await asyncio.to_thread(crashed.kill)

            async def new_leader() -> bool:
                elected, _ = await _stream_cluster(observer)
                return elected not in (None, leader)

            await eventually(new_leader, timeout=30, what=f"a stream leader other than {leader}")
            election_seconds = time.monotonic() - crashed_at
            await more(8)

        outcomes = [outcome for burst in bursts for outcome in burst.outcomes]
        accepted = first.accepted | second.accepted
        assert [outcome for burst in bursts for outcome in burst.unexpected(allowed_statuses={200})] == []
        async with httpx.AsyncClient(base_url=base_urls[1], timeout=30) as client:
            await wait_until_done(client, accepted, timeout=60)
        rows = await wait_until_settled(cluster_db, prefix, timeout=10)
        assert {row.id for row in rows} == accepted
        assert [row for row in rows if row.status != "done"] == []
        outputs = await _stored_outputs(observer)
        assert_outputs_once(rows, set(outputs), outputs.__getitem__)
        # Bookkeeping: the failover cost no task an attempt, and no task was rendered twice.
        assert [row for row in rows if row.attempts != 1] == []
        renders = _renders(workers)
        assert {task_id: renders[task_id] for task_id in accepted if renders[task_id] != 1} == {}
        print(
            f"\n{len(outcomes)} uploads, {len(accepted)} accepted and done; stream leader {leader} "
            f"(and the consumer's) killed, new stream leader elected after {election_seconds:.1f} s"
        )
        for worker in workers:
            assert await worker.stop() == 0, worker.log_tail()
        left = [path for process in ("api", "worker") for path in tmp_path.glob(f"{process}-*/*/*")]
        assert left == [], "scratch files outlived their task"
    finally:
        for process in (*workers, *apis):
            await process.stop()
