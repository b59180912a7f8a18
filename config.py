"""Settings for every imagequeue process: the only module that reads the environment.

Layers, later ones winning: the defaults below, then `.secrets.toml` beside this file (or the file
named by `SETTINGS_FILE_FOR_DYNACONF`), then environment variables with the unprefixed names the
design document uses (`DATABASE_URL`, `NATS_URL`, `UPLOADS_DIR`, `PROCESSED_DIR`, ...).

Nothing is read at import time: call `get_settings()` (cached) from a process's start-up code.
A bad value stops start-up with a `ConfigError` that names the setting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from dynaconf import Dynaconf, ValidationError, Validator

PROJECT_ROOT = Path(__file__).resolve().parent


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    nats_url: str
    uploads_dir: Path
    processed_dir: Path
    max_upload_bytes: int
    max_image_pixels: int
    max_frames: int
    watermark_text: str
    worker_concurrency: int
    ack_wait_seconds: float
    max_deliver: int
    retry_delay_seconds: float
    outbox_interval_seconds: float
    lost_after_seconds: float
    api_keys: tuple[str, ...]
    worker_heartbeat_file: Path | None
    log_level: str
    log_json: bool
    retention_days: int
    # Operator presets by name, as given (core.processing.build_presets validates them).
    presets: dict[str, Any]
    max_output_pixels: int
    keep_metadata: bool
    webp_method: int
    worker_pool: Literal["threads", "processes"]
    webhook_secret: str
    webhook_allow_private: bool
    webhook_max_attempts: int
    webhook_retry_seconds: float
    webhook_timeout_seconds: float
    worker_metrics_port: int
    stream_replicas: int
    consumer_replicas: int
    storage_backend: Literal["local", "nats"]


_DEFAULTS: dict[str, object] = {
    "DATABASE_URL": "postgresql+asyncpg://postgres:postgres@localhost:5432/imagequeue",
    "NATS_URL": "nats://localhost:4222",
    "UPLOADS_DIR": "uploads",
    "PROCESSED_DIR": "processed",
    "MAX_UPLOAD_BYTES": 25 * 1024 * 1024,
    "MAX_IMAGE_PIXELS": 50_000_000,
    "MAX_FRAMES": 500,
    "WATERMARK_TEXT": "AI magic added!",
    "WORKER_CONCURRENCY": os.cpu_count() or 1,
    "ACK_WAIT_SECONDS": 30,
    "MAX_DELIVER": 5,
    "RETRY_DELAY_SECONDS": 5,
    "OUTBOX_INTERVAL_SECONDS": 5,
    "LOST_AFTER_SECONDS": 300,
    "API_KEYS": [],
    "WORKER_HEARTBEAT_FILE": "",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",
    "RETENTION_DAYS": 0,
    "PRESETS": {},
    "MAX_OUTPUT_PIXELS": 50_000_000,
    "KEEP_METADATA": False,
    # WebP encoder effort 0-6. Measured on a 12 MP photo at quality 80 (README, "Speed"): 0 encodes
    # 4.4× faster than Pillow's default 4, for a file 3% larger.
    "WEBP_METHOD": 0,
    "WORKER_POOL": "threads",
    "WEBHOOK_SECRET": "",
    "WEBHOOK_ALLOW_PRIVATE": False,
    "WEBHOOK_MAX_ATTEMPTS": 8,
    "WEBHOOK_RETRY_SECONDS": 5,
    "WEBHOOK_TIMEOUT_SECONDS": 10,
    "WORKER_METRICS_PORT": 9101,
    "STREAM_REPLICAS": 1,
    "CONSUMER_REPLICAS": 0,
    # Where uploads and outputs are kept: `local` (UPLOADS_DIR and PROCESSED_DIR, shared by every
    # process) or `nats` (JetStream object store buckets; the folders are then scratch space only).
    "STORAGE_BACKEND": "local",
}

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_POSTGRES_URL = re.compile(r"(postgresql|postgresql\+asyncpg|postgres)://\S+")
_NATS_URL = re.compile(r"(nats|tls)://[^,\s]+")
_PLACEHOLDER_KEYS = ("change-me-change-me", "changeme-changeme", "xxxxxxxxxxxxxxxx")
STORAGE_BACKENDS = ("local", "nats")
# JetStream refuses more than 5 replicas of a stream.
MAX_REPLICAS = 5


def _number(value: object) -> bool:
    """TOML and environment values parse `true` as a bool, which Python also counts as an int."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_VALIDATORS = [
    Validator(
        "DATABASE_URL",
        is_type_of=str,
        condition=lambda url: bool(_POSTGRES_URL.fullmatch(url)),
        messages={"condition": "DATABASE_URL must be a postgresql:// URL, got {value!r}"},
    ),
    Validator(
        "NATS_URL",
        is_type_of=str,
        condition=lambda url: all(_NATS_URL.fullmatch(part.strip()) for part in url.split(",")),
        messages={
            "condition": "NATS_URL must be nats:// URLs (comma-separated for a cluster), got {value!r}"
        },
    ),
    # Text settings may look like numbers to the TOML parser (WATERMARK_TEXT=2024): keep them text.
    Validator("UPLOADS_DIR", "PROCESSED_DIR", "WATERMARK_TEXT", cast=str, len_min=1),
    Validator("WATERMARK_TEXT", len_max=200),
    *(
        Validator(
            name,
            condition=_count,
            messages={"condition": f"{name} must be a whole number above 0, got {{value!r}}"},
        )
        for name in (
            "WEBHOOK_MAX_ATTEMPTS",
            "MAX_UPLOAD_BYTES",
            "MAX_IMAGE_PIXELS",
            "MAX_FRAMES",
            "WORKER_CONCURRENCY",
            "MAX_DELIVER",
            "MAX_OUTPUT_PIXELS",
        )
    ),
    *(
        Validator(
            name,
            condition=lambda value: _number(value) and value > 0,
            messages={"condition": f"{name} must be a number above 0, got {{value!r}}"},
        )
        for name in (
            "ACK_WAIT_SECONDS",
            "RETRY_DELAY_SECONDS",
            "OUTBOX_INTERVAL_SECONDS",
            "WEBHOOK_RETRY_SECONDS",
            "WEBHOOK_TIMEOUT_SECONDS",
        )
    ),
    Validator(
        "ACK_WAIT_SECONDS",
        lte=30,
        messages={"operations": "ACK_WAIT_SECONDS must be at most 30, got {value}"},
    ),
    Validator(
        "LOST_AFTER_SECONDS",
        condition=lambda lease: _number(lease) and lease >= 60,
        messages={
            "condition": "LOST_AFTER_SECONDS must be at least 60 (longer than any upload), got {value}"
        },
    ),
    Validator(
        "API_KEYS",
        is_type_of=(list, str),
        condition=lambda keys: all(
            len(key) >= 16 and key not in _PLACEHOLDER_KEYS for key in _key_list(keys)
        ),
        messages={"condition": "API_KEYS must hold keys of at least 16 characters, none a placeholder"},
    ),
    Validator("WORKER_HEARTBEAT_FILE", is_type_of=str),
    Validator("LOG_LEVEL", is_in=_LOG_LEVELS),
    Validator("LOG_FORMAT", is_in=("text", "json")),
    Validator(
        "RETENTION_DAYS",
        condition=lambda days: isinstance(days, int) and not isinstance(days, bool) and days >= 0,
        messages={
            "condition": "RETENTION_DAYS must be a whole number of days, 0 to keep everything, got {value!r}"
        },
    ),
    Validator(
        "PRESETS",
        is_type_of=dict,
        messages={"operations": "PRESETS must be a table of preset name -> {description, ops}"},
    ),
    Validator("KEEP_METADATA", is_type_of=bool),
    Validator("WORKER_POOL", is_in=("threads", "processes")),
    Validator(
        "STORAGE_BACKEND",
        is_in=STORAGE_BACKENDS,
        messages={"operations": "STORAGE_BACKEND must be `local` or `nats`, got {value!r}"},
    ),
    Validator("WEBHOOK_SECRET", cast=str),
    Validator(
        "WEBHOOK_SECRET",
        condition=lambda secret: secret == "" or (len(secret) >= 16 and secret not in _PLACEHOLDER_KEYS),
        messages={"condition": "WEBHOOK_SECRET must be empty (callbacks off) or at least 16 characters"},
    ),
    Validator("WEBHOOK_ALLOW_PRIVATE", is_type_of=bool),
    Validator(
        "WEBP_METHOD",
        condition=lambda method: (
            isinstance(method, int) and not isinstance(method, bool) and 0 <= method <= 6
        ),
        messages={"condition": "WEBP_METHOD must be a whole number from 0 to 6, got {value!r}"},
    ),
    Validator(
        "WORKER_METRICS_PORT",
        condition=lambda port: isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535,
        messages={
            "condition": "WORKER_METRICS_PORT must be a TCP port (1-65535), or 0 for off, got {value!r}"
        },
    ),
    Validator(
        "STREAM_REPLICAS",
        condition=lambda replicas: _count(replicas) and replicas <= MAX_REPLICAS,
        messages={
            "condition": f"STREAM_REPLICAS must be a whole number from 1 to {MAX_REPLICAS}, got {{value!r}}"
        },
    ),
    Validator(
        "CONSUMER_REPLICAS",
        condition=lambda replicas: (
            isinstance(replicas, int) and not isinstance(replicas, bool) and 0 <= replicas <= MAX_REPLICAS
        ),
        messages={
            "condition": f"CONSUMER_REPLICAS must be a whole number from 0 (same as the stream) to "
            f"{MAX_REPLICAS}, got {{value!r}}"
        },
    ),
]


def _check_replicas(stream: int, consumer: int) -> None:
    """JetStream requires a work-queue stream's consumers to have the stream's replica count (it
    answers error 10134 otherwise): say so at start-up rather than when the first worker connects."""
    if consumer not in (0, stream):
        raise ConfigError(
            f"invalid setting: CONSUMER_REPLICAS must be 0 or equal to STREAM_REPLICAS ({stream}) for a "
            f"work-queue stream, got {consumer}"
        )


def _key_list(raw: list | str) -> tuple[str, ...]:
    """API_KEYS as a TOML list, or a comma-separated string (handier in an environment variable)."""
    items = raw.split(",") if isinstance(raw, str) else raw
    return tuple(str(item).strip() for item in items if str(item).strip())


def _asyncpg_url(url: str) -> str:
    """Accept the plain `postgresql://` form operators tend to paste, and use the asyncpg driver."""
    scheme, rest = url.split("://", 1)
    return url if scheme == "postgresql+asyncpg" else f"postgresql+asyncpg://{rest}"


def _layers() -> Dynaconf:
    """`.secrets.toml` and the environment, without our defaults."""
    return Dynaconf(
        envvar_prefix=False,
        environments=False,
        load_dotenv=False,
        root_path=str(PROJECT_ROOT),
        settings_files=[".secrets.toml"],
    )


def configured_names() -> set[str]:
    """The settings that `.secrets.toml` or the environment give a value (the rest are defaults)."""
    raw = _layers()
    return {name for name in _DEFAULTS if raw.get(name) not in (None, "")}


def load_settings() -> Settings:
    """Read and validate every layer now; raise ConfigError naming the first bad setting."""
    raw = _layers()
    for key, value in _DEFAULTS.items():
        raw.setdefault(key, value)
    try:
        raw.validators.register(*_VALIDATORS)
        raw.validators.validate()
    except ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    _check_replicas(raw["STREAM_REPLICAS"], raw["CONSUMER_REPLICAS"])

    def path(key: str) -> Path:
        return (PROJECT_ROOT / str(raw[key])).resolve()

    heartbeat = str(raw["WORKER_HEARTBEAT_FILE"])
    return Settings(
        database_url=_asyncpg_url(raw["DATABASE_URL"]),
        nats_url=raw["NATS_URL"],
        uploads_dir=path("UPLOADS_DIR"),
        processed_dir=path("PROCESSED_DIR"),
        max_upload_bytes=raw["MAX_UPLOAD_BYTES"],
        max_image_pixels=raw["MAX_IMAGE_PIXELS"],
        max_frames=raw["MAX_FRAMES"],
        watermark_text=raw["WATERMARK_TEXT"],
        worker_concurrency=raw["WORKER_CONCURRENCY"],
        ack_wait_seconds=float(raw["ACK_WAIT_SECONDS"]),
        max_deliver=raw["MAX_DELIVER"],
        retry_delay_seconds=float(raw["RETRY_DELAY_SECONDS"]),
        outbox_interval_seconds=float(raw["OUTBOX_INTERVAL_SECONDS"]),
        lost_after_seconds=float(raw["LOST_AFTER_SECONDS"]),
        api_keys=_key_list(raw["API_KEYS"]),
        worker_heartbeat_file=Path(heartbeat) if heartbeat else None,
        log_level=raw["LOG_LEVEL"],
        log_json=raw["LOG_FORMAT"] == "json",
        retention_days=raw["RETENTION_DAYS"],
        presets=_plain(raw["PRESETS"]),
        max_output_pixels=raw["MAX_OUTPUT_PIXELS"],
        keep_metadata=raw["KEEP_METADATA"],
        webp_method=raw["WEBP_METHOD"],
        worker_pool=raw["WORKER_POOL"],
        webhook_secret=raw["WEBHOOK_SECRET"],
        webhook_allow_private=raw["WEBHOOK_ALLOW_PRIVATE"],
        webhook_max_attempts=raw["WEBHOOK_MAX_ATTEMPTS"],
        webhook_retry_seconds=float(raw["WEBHOOK_RETRY_SECONDS"]),
        webhook_timeout_seconds=float(raw["WEBHOOK_TIMEOUT_SECONDS"]),
        worker_metrics_port=raw["WORKER_METRICS_PORT"],
        stream_replicas=raw["STREAM_REPLICAS"],
        consumer_replicas=raw["CONSUMER_REPLICAS"],
        storage_backend=raw["STORAGE_BACKEND"],
    )


def _plain(value: Any) -> Any:
    """Dynaconf's boxed tables and lists as plain dicts and lists (with their key case kept)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use (tests call `get_settings.cache_clear()`)."""
    return load_settings()
