"""The Kubernetes manifests' wiring (deploy/k8s), read from the files themselves: no cluster needed.

The same promises as the compose files': every setting config.py reads reaches the pods, probes hit
routes the API really serves, images run what their Dockerfiles build, labels and selectors agree,
and KEDA watches the stream and consumer core/queue.py creates. When kubectl is installed, its
built-in kustomize renders the whole kustomization too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import config
from api.routes import health
from core import queue
from tests.test_compose import (
    DOCKERFILES,
    _env,
    _healthcheck_argv,
    _instructions,
    _option,
    _process_argv,
    _user_uid,
)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "imagequeue"

Manifest = dict[str, Any]
# The workload of each Dockerfile: the image is named after it (imagequeue-api <- Dockerfile.api).
WORKLOADS = {("Deployment", "imagequeue-api"): "api", ("Deployment", "imagequeue-worker"): "worker"}
MIGRATE = ("Job", "imagequeue-migrate")
# API keys guard the HTTP API only; the workers and the migration leave them at their default.
API_ONLY_SETTINGS = {"API_KEYS", "WEBHOOK_SECRET"}


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> dict[tuple[str, str], Manifest]:
    found: dict[tuple[str, str], Manifest] = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = document
    return found


def _pod_spec(workload: Manifest) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: Manifest) -> dict[str, Any]:
    (container,) = _pod_spec(workload)["containers"]
    return container


def _config_map(manifests: dict[tuple[str, str], Manifest]) -> dict[str, str]:
    return manifests[("ConfigMap", "imagequeue-config")]["data"]


def _secret(manifests: dict[tuple[str, str], Manifest]) -> dict[str, str]:
    return manifests[("Secret", "imagequeue-secrets")]["stringData"]


def _settings_given(
    manifests: dict[tuple[str, str], Manifest], workload: Manifest, dockerfile: str
) -> set[str]:
    """What a container's environment holds: its image's ENV, envFrom ConfigMaps and its env list."""
    container = _container(workload)
    names = set(_env(_instructions(DOCKERFILES[dockerfile])))
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "imagequeue-config", source
        names |= set(_config_map(manifests))
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference is not None:
            assert reference["name"] == "imagequeue-secrets", variable
            assert reference["key"] in _secret(manifests), f"no key {reference['key']} in the Secret"
        names.add(variable["name"])
    return names


def _workloads(manifests: dict[tuple[str, str], Manifest]) -> list[tuple[Manifest, str]]:
    """(workload, Dockerfile name) for the two Deployments and the migrate Job."""
    return [(manifests[key], image) for key, image in WORKLOADS.items()] + [(manifests[MIGRATE], "api")]


def _image_for(kustomization: dict[str, Any], container: dict[str, Any]) -> str:
    """The Dockerfile a container's image comes from, by the images' naming (imagequeue-<Dockerfile>)."""
    names = {image["name"] for image in kustomization["images"]}
    assert container["image"] in names, f"{container['image']} is not one of the kustomization's images"
    return container["image"].removeprefix("imagequeue-")


# --- the kustomization --------------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_in_the_folder(kustomization: dict[str, Any]) -> None:
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert kustomization["namespace"] == NAMESPACE


def test_kustomization_images_are_the_two_dockerfiles_images(kustomization: dict[str, Any]) -> None:
    images = {image["name"]: image for image in kustomization["images"]}
    assert set(images) == {f"imagequeue-{name}" for name in DOCKERFILES}
    assert all(str(image["newTag"]) for image in images.values()), "pin a tag, never `latest` by default"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_every_object_into_the_namespace() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    objects = [document for document in yaml.safe_load_all(rendered) if document]
    assert {obj["kind"] for obj in objects} >= {"Deployment", "Service", "Job", "ConfigMap", "ScaledObject"}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert container["image"].split(":")[0].startswith("imagequeue-") and ":" in container["image"]


# --- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [*WORKLOADS, MIGRATE])
def test_every_setting_config_reads_reaches_the_pod(
    manifests: dict[tuple[str, str], Manifest], kustomization: dict[str, Any], key: tuple[str, str]
) -> None:
    workload = manifests[key]
    dockerfile = _image_for(kustomization, _container(workload))
    wanted = set(config._DEFAULTS) - (set() if key == ("Deployment", "imagequeue-api") else API_ONLY_SETTINGS)
    assert wanted - _settings_given(manifests, workload, dockerfile) == set()


def test_the_config_map_and_secret_hold_only_settings_config_knows(
    manifests: dict[tuple[str, str], Manifest],
) -> None:
    assert set(_config_map(manifests)) <= set(config._DEFAULTS)
    assert set(_secret(manifests)) <= set(config._DEFAULTS)
    assert not set(_config_map(manifests)) & set(_secret(manifests)), "one source per setting"


def _load_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict[str, str]) -> config.Settings:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(empty))
    for name in config._DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return config.load_settings()


def test_the_settings_load_and_spread_the_stream_over_the_three_nats_nodes(
    manifests: dict[tuple[str, str], Manifest], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {**_config_map(manifests), **_secret(manifests), "API_KEYS": "a-real-key-of-enough-length"}

    settings = _load_with(monkeypatch, tmp_path, values)

    hosts = {urlsplit(url).hostname for url in settings.nats_url.split(",")}
    assert len(hosts) == settings.stream_replicas == 3


def test_the_secret_is_a_placeholder_that_config_refuses_only_in_part(
    manifests: dict[tuple[str, str], Manifest], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As secret.yaml says: the API_KEYS placeholder stops start-up, the database password cannot."""
    secret = _secret(manifests)
    assert "REPLACE-ME" in (urlsplit(secret["DATABASE_URL"]).password or "")
    with pytest.raises(config.ConfigError, match="API_KEYS"):
        _load_with(monkeypatch, tmp_path, {**_config_map(manifests), **secret})
    _load_with(monkeypatch, tmp_path, {**_config_map(manifests), "DATABASE_URL": secret["DATABASE_URL"]})


# --- images, commands and probes ----------------------------------------------------------------------


def test_the_apps_run_their_images_own_commands(
    manifests: dict[tuple[str, str], Manifest], kustomization: dict[str, Any]
) -> None:
    for key, dockerfile in WORKLOADS.items():
        container = _container(manifests[key])
        assert _image_for(kustomization, container) == dockerfile
        assert "command" not in container and "args" not in container, f"{key}: the image's CMD runs"
    migrate = _container(manifests[MIGRATE])
    assert _image_for(kustomization, migrate) == "api", "the API image carries the migrations"
    assert migrate["command"] == ["alembic", "upgrade", "head"]


def test_the_migrate_job_runs_once_and_retries_on_failure(manifests: dict[tuple[str, str], Manifest]) -> None:
    job = manifests[MIGRATE]["spec"]
    assert job["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert job["backoffLimit"] >= 1


def _route_paths() -> set[str]:
    return {route.path for route in health.router.routes}


def test_api_probes_hit_the_routes_the_api_serves_on_its_port(
    manifests: dict[tuple[str, str], Manifest],
) -> None:
    container = _container(manifests[("Deployment", "imagequeue-api")])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    served = int(_option(_process_argv(_instructions(DOCKERFILES["api"])), "--port"))
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (readiness["path"], liveness["path"]) == ("/ready", "/health")
    assert {readiness["path"], liveness["path"]} <= _route_paths()
    for probe in (readiness, liveness):
        assert ports[probe["port"]] == served


def test_worker_liveness_is_the_images_heartbeat_check(manifests: dict[tuple[str, str], Manifest]) -> None:
    worker = manifests[("Deployment", "imagequeue-worker")]
    probe = _container(worker)["livenessProbe"]["exec"]["command"]
    assert probe == _healthcheck_argv(_instructions(DOCKERFILES["worker"]))
    assert _container(worker)["livenessProbe"]["initialDelaySeconds"] >= 10


def test_worker_heartbeat_file_is_on_a_writable_mount(manifests: dict[tuple[str, str], Manifest]) -> None:
    worker = manifests[("Deployment", "imagequeue-worker")]
    heartbeat = PurePosixPath(_config_map(manifests)["WORKER_HEARTBEAT_FILE"])
    assert heartbeat == PurePosixPath(_env(_instructions(DOCKERFILES["worker"]))["WORKER_HEARTBEAT_FILE"])
    volumes = {volume["name"]: volume for volume in _pod_spec(worker)["volumes"]}
    writable = [
        mount["mountPath"]
        for mount in _container(worker)["volumeMounts"]
        if "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly")
    ]
    assert any(heartbeat.is_relative_to(path) for path in writable), writable


def test_pods_get_time_to_finish_their_work(manifests: dict[tuple[str, str], Manifest]) -> None:
    argv = _process_argv(_instructions(DOCKERFILES["api"]))
    api = _pod_spec(manifests[("Deployment", "imagequeue-api")])
    worker = _pod_spec(manifests[("Deployment", "imagequeue-worker")])
    assert api["terminationGracePeriodSeconds"] > float(_option(argv, "--timeout-graceful-shutdown"))
    assert worker["terminationGracePeriodSeconds"] >= 40


# --- security, resources, storage ---------------------------------------------------------------------


@pytest.mark.parametrize("key", [*WORKLOADS, MIGRATE])
def test_pods_run_as_the_images_non_root_user_without_privileges(
    manifests: dict[tuple[str, str], Manifest], kustomization: dict[str, Any], key: tuple[str, str]
) -> None:
    workload = manifests[key]
    pod = _pod_spec(workload)["securityContext"]
    uid = _user_uid(_instructions(DOCKERFILES[_image_for(kustomization, _container(workload))]))
    assert pod["runAsNonRoot"] is True and str(pod["runAsUser"]) == uid
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = _container(workload)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]
    assert _pod_spec(workload)["automountServiceAccountToken"] is False


@pytest.mark.parametrize("key", [*WORKLOADS, MIGRATE])
def test_containers_request_and_limit_cpu_and_memory(
    manifests: dict[tuple[str, str], Manifest], key: tuple[str, str]
) -> None:
    resources = _container(manifests[key])["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, f"{key}: {kind}"


@pytest.mark.parametrize("key", list(WORKLOADS))
def test_apps_keep_images_in_nats_and_scratch_files_on_an_empty_dir_of_their_own(
    manifests: dict[tuple[str, str], Manifest], key: tuple[str, str]
) -> None:
    """Pods on different nodes share no volume: images go to the object store, and the folders are
    each pod's scratch space, writable under the read-only root filesystem."""
    settings = _config_map(manifests)
    assert settings["STORAGE_BACKEND"] == "nats"
    assert not [kind for kind, _ in manifests if kind == "PersistentVolumeClaim"]
    workload = manifests[key]
    volumes = {volume["name"]: volume for volume in _pod_spec(workload)["volumes"]}
    scratch = [
        mount["mountPath"]
        for mount in _container(workload)["volumeMounts"]
        if "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly")
    ]
    for setting in ("UPLOADS_DIR", "PROCESSED_DIR"):
        assert settings[setting] in scratch, f"{key}: {setting}"


# --- labels and selectors -----------------------------------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("key", list(WORKLOADS))
def test_each_deployment_selects_its_own_pods_only(
    manifests: dict[tuple[str, str], Manifest], key: tuple[str, str]
) -> None:
    selector = manifests[key]["spec"]["selector"]["matchLabels"]
    for other in WORKLOADS:
        labels = manifests[other]["spec"]["template"]["metadata"]["labels"]
        assert _selects(selector, labels) == (other == key), (key, other)


def test_the_service_and_disruption_budget_select_the_api_pods(
    manifests: dict[tuple[str, str], Manifest],
) -> None:
    api = manifests[("Deployment", "imagequeue-api")]
    worker = manifests[("Deployment", "imagequeue-worker")]
    service = manifests[("Service", "imagequeue-api")]["spec"]
    budget = manifests[("PodDisruptionBudget", "imagequeue-api")]["spec"]
    for selector in (service["selector"], budget["selector"]["matchLabels"]):
        assert _selects(selector, api["spec"]["template"]["metadata"]["labels"])
        assert not _selects(selector, worker["spec"]["template"]["metadata"]["labels"])
    port_names = {port["name"] for port in _container(api)["ports"]}
    assert all(port["targetPort"] in port_names for port in service["ports"])
    assert budget["minAvailable"] < api["spec"]["replicas"], "a budget of every replica blocks every drain"


# --- KEDA -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaled_object(manifests: dict[tuple[str, str], Manifest]) -> Manifest:
    return manifests[("ScaledObject", "imagequeue-worker")]


def test_keda_scales_the_worker_deployment_which_leaves_the_count_to_it(
    manifests: dict[tuple[str, str], Manifest], scaled_object: Manifest
) -> None:
    assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled_object["spec"]["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "imagequeue-worker")
    assert "replicas" not in manifests[("Deployment", "imagequeue-worker")]["spec"], (
        "kubectl apply would fight KEDA"
    )
    spec = scaled_object["spec"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"], (
        "one worker always runs the retention purge"
    )


def test_keda_watches_the_stream_and_consumer_the_workers_use(scaled_object: Manifest) -> None:
    (trigger,) = scaled_object["spec"]["triggers"]
    metadata = trigger["metadata"]
    assert trigger["type"] == "nats-jetstream"
    assert (metadata["stream"], metadata["consumer"]) == (queue.STREAM, queue.DURABLE)
    assert metadata["account"] == "$G"
    assert int(metadata["lagThreshold"]) > 0
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA trigger metadata is strings"


def test_keda_reaches_each_nats_node_the_apps_connect_to(
    manifests: dict[tuple[str, str], Manifest], scaled_object: Manifest
) -> None:
    """KEDA asks the consumer's leader at <server name>.<endpoint>: every NATS_URL host must be one."""
    (trigger,) = scaled_object["spec"]["triggers"]
    endpoint = urlsplit(f"//{trigger['metadata']['natsServerMonitoringEndpoint']}")
    for url in _config_map(manifests)["NATS_URL"].split(","):
        host = urlsplit(url).hostname or ""
        node, _, service = host.partition(".")
        assert service == endpoint.hostname and node, (host, endpoint.hostname)
    assert endpoint.port == 8222


# --- deploy/k8s-s3: the same deployment with an external bucket -------------------------------------


def test_the_s3_overlay_renders_with_images_in_a_bucket_and_credentials_for_every_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "k8s-s3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in yaml.safe_load_all(rendered) if obj}
    settings = objects[("ConfigMap", "imagequeue-config")]["data"]
    assert settings["STORAGE_BACKEND"] == "s3"
    credentials = objects[("Secret", "imagequeue-s3-credentials")]
    assert credentials["metadata"]["namespace"] == NAMESPACE
    assert set(credentials["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for key in (*WORKLOADS, MIGRATE):
        sources = _container(objects[key])["envFrom"]
        assert {"configMapRef": {"name": "imagequeue-config"}} in sources, key
        assert {"secretRef": {"name": "imagequeue-s3-credentials", "optional": True}} in sources, key
    loaded = _load_with(monkeypatch, tmp_path, settings)
    assert (loaded.storage_backend, loaded.s3_endpoint_url, loaded.s3_bucket) == ("s3", "", "imagequeue")
