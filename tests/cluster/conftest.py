"""A three-node NATS JetStream cluster on loopback ports, fresh for each test (about 0.3 s to start)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.servers import LocalNatsCluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[LocalNatsCluster]:
    cluster = LocalNatsCluster(tmp_path / "nats-cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
