"""What a Docker image ships, rebuilt without Docker: its own venv and its own code tree.

Both are read from the image's Dockerfile (the `pip install -r` file and the COPY sources), so the
tests run what the image would run: a module the requirements miss, or a file the image does not
copy, fails here as it would in the container.

Venvs are cached outside the repository by a hash of the requirements files the image copies (and
the Python version), so only a change to them pays for a new install. A build happens in a temporary
folder renamed into place at the end: one killed half-way is never taken for a finished one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagequeue" / "runtime-venvs"
BUILDING_PREFIX = ".building-"


@dataclass(frozen=True)
class ImageFiles:
    """The sources a Dockerfile copies (paths relative to the repository) and its requirements file."""

    requirements: str
    copied: tuple[str, ...]

    @property
    def requirement_files(self) -> tuple[str, ...]:
        return tuple(sorted(path for path in self.copied if path.startswith("requirements")))

    @property
    def code(self) -> tuple[str, ...]:
        return tuple(path for path in self.copied if path not in self.requirement_files)


def image_files(image: str) -> ImageFiles:
    requirements: str | None = None
    copied: list[str] = []
    for line in (ROOT / f"Dockerfile.{image}").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            copied += [word.rstrip("/") for word in words[1:-1] if not word.startswith("--")]
        elif words[:1] == ["RUN"] and "pip" in words and "-r" in words:
            requirements = words[words.index("-r") + 1]
    assert requirements is not None, f"Dockerfile.{image} installs no requirements file"
    assert requirements in copied, f"Dockerfile.{image} installs {requirements} without copying it"
    return ImageFiles(requirements, tuple(copied))


def image_venv(image: str) -> Path:
    """The venv holding exactly what the image's requirements install; its python is `bin/python`."""
    files = image_files(image)
    digest = hashlib.sha256(f"{sys.version}\0{sys.base_prefix}".encode())  # the interpreter it links to
    for name in files.requirement_files:
        digest.update(f"\0{name}\0".encode() + (ROOT / name).read_bytes())
    venv = CACHE_ROOT / f"{image}-{digest.hexdigest()[:16]}"
    if (venv / "bin" / "python").exists():
        return venv
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds()
    building = Path(tempfile.mkdtemp(prefix=f"{BUILDING_PREFIX}{os.getpid()}-", dir=CACHE_ROOT))
    try:
        # The base interpreter, not the dev venv's packages: a new venv sees only what it installs.
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, capture_output=True)
        install = subprocess.run(
            [
                *(str(building / "bin" / "python"), "-m", "pip", "install", "--quiet"),
                *("--disable-pip-version-check", "-r", str(ROOT / files.requirements)),
            ],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            raise RuntimeError(f"pip install -r {files.requirements} failed:\n{install.stderr[-3000:]}")
        try:
            building.rename(venv)  # scripts keep the old path in their shebang: run `bin/python -m`
        except OSError:
            if not (venv / "bin" / "python").exists():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return venv


def _remove_abandoned_builds() -> None:
    """Builds whose process is gone (killed half-way) are only litter."""
    for path in CACHE_ROOT.glob(f"{BUILDING_PREFIX}*"):
        pid = int(path.name.removeprefix(BUILDING_PREFIX).split("-", 1)[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def image_code(image: str, destination: Path) -> Path:
    """Copies of exactly the code the image copies, in `destination` (its /app): nothing else imports."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in image_files(image).code:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def image_environment(code: Path) -> dict[str, str]:
    """As the Dockerfiles set it: the code folder on the path, no bytecode written."""
    return {"PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
