"""Settings for every imagequeue process: the only module that reads the environment.

Layers, later ones winning: the defaults declared below, then `.secrets.toml` beside this file (or the file
named by `SETTINGS_FILE_FOR_DYNACONF`), then environment variables with the unprefixed names the
design document uses (`DATABASE_URL`, `NATS_URL`, `UPLOADS_DIR`, `PROCESSED_DIR`, ...).

Each setting is declared once, as a field of `Settings`: its type says what values it takes and what
the attribute holds; `setting(...)` adds its default (as `.secrets.toml` would spell it), bounds and any
further rule. The setting's name is the field's, upper-cased.

Nothing is read at import time: call `get_settings()` (cached) from a process's start-up code.
A bad value stops start-up with a `ConfigError` that names the setting.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from dynaconf import Dynaconf

PROJECT_ROOT = Path(__file__).resolve().parent
# JetStream refuses more than 5 replicas of a stream.
MAX_REPLICAS = 5
# API_PROCESSES: more than a large host's cores is a typo, not a plan.
MAX_API_PROCESSES = 64

log = logging.getLogger(__name__)


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Declaration:
    """What a setting's type does not say: its default, bounds and any further rule."""

    default: object
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    # A further test of the value as given (after the type's), with `rule` saying what it wants.
    check: Callable[[Any], bool] | None = None
    # What a good value is, after "<NAME> must": where the type and bounds do not say it well.
    rule: str = ""
    # How the attribute is made, where the type's own reading will not do.
    convert: Callable[[Any], Any] | None = None
    # A former name, still read (with a warning) so that existing deployments keep starting.
    old_name: str = ""
    # Keep the value out of error messages: they end up in logs.
    secret: bool = False


def setting(
    default: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
    convert: Callable[[Any], Any] | None = None,
    old_name: str = "",
    secret: bool = False,
) -> dict[str, Declaration]:
    """A `Settings` field's metadata: its declaration. (The field itself has no dataclass default:
    `load_settings` gives every one.)"""
    return {"setting": Declaration(default, gt, ge, le, check, rule, convert, old_name, secret)}


_POSTGRES_URL = re.compile(r"(postgresql|postgresql\+asyncpg|postgres)://\S+")
_NATS_URL = re.compile(r"(nats|tls)://[^,\s]+")
_HTTP_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}/")
_PLACEHOLDER_KEYS = ("change-me-change-me", "changeme-changeme", "xxxxxxxxxxxxxxxx")
# A watermark image's name appears in ops and error messages: the same rule as output and preset names.
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


PRIORITIES = ("interactive", "normal", "bulk")
Priority = Literal["interactive", "normal", "bulk"]


def lower_priority(first: str, second: str) -> str:
    """The lower of two priorities (PRIORITIES runs from the highest to the lowest)."""
    return max(first, second, key=PRIORITIES.index)


# Bounds on a key's limits: large enough for any real client, small enough that the arithmetic on
# them (core.api_keys) stays exact.
MAX_UPLOADS_PER_MINUTE = 1_000_000
MAX_PENDING_LIMIT = 10_000_000


@dataclass(frozen=True)
class KeyPolicy:
    """One API_KEYS entry: the key, and what it may do. A limit of None is no limit; 0 refuses every
    upload with that key (it can still read its tasks). `priority` is the default priority of the
    key's uploads; an upload may ask for another, up to `max_priority` when the entry sets one (None:
    any, as before that field existed)."""

    # Out of the repr: a settings object printed in a log or a traceback must not show a key.
    key: str = field(repr=False)
    uploads_per_minute: int | None = None
    max_pending: int | None = None
    priority: Priority = "normal"
    max_priority: Priority | None = None

    @property
    def limited(self) -> bool:
        return self.uploads_per_minute is not None or self.max_pending is not None


_KEY_FIELDS = ("key", "uploads_per_minute", "max_pending", "priority", "max_priority")
_BAD_KEYS = "invalid setting: API_KEYS must hold keys of at least 16 characters, none a placeholder"


def _key_items(raw: list[Any] | str) -> list[Any]:
    """API_KEYS as a TOML list, or a string: a JSON list (the environment cannot give TOML tables
    any other way than `@json` or TOML's inline form), else comma-separated keys."""
    if isinstance(raw, list):
        return raw
    if raw.lstrip().startswith("["):
        try:
            items = json.loads(raw)
        except ValueError:
            # Never the value itself: it holds keys.
            raise ConfigError(
                "invalid setting: API_KEYS starts with `[` but is not a JSON or TOML list"
            ) from None
        if not isinstance(items, list):
            raise ConfigError("invalid setting: API_KEYS must be a list")
        return items
    return raw.split(",")


def _limit(entry: int, name: str, value: object, most: int) -> int | None:
    if value is None:
        return None
    if not _whole(value) or not 0 <= value <= most:  # type: ignore[operator]
        raise ConfigError(
            f"invalid setting: API_KEYS entry {entry}: `{name}` must be a whole number from 0 to {most}, "
            f"got {value!r}"
        )
    return value  # type: ignore[return-value]


def _key_policy(entry: int, item: object) -> KeyPolicy | None:
    """One entry (1-based `entry` for messages) as a policy; None for an empty string entry. Errors
    name the entry by position, never by key."""
    if isinstance(item, str):
        key = item.strip()
        if not key:
            return None
        if not _real_key(key):
            raise ConfigError(_BAD_KEYS)
        return KeyPolicy(key)
    if not isinstance(item, dict):
        raise ConfigError(f"invalid setting: API_KEYS entry {entry} must be a key or a table with `key`")
    unknown = sorted(set(item) - set(_KEY_FIELDS))
    if unknown:
        raise ConfigError(
            f"invalid setting: API_KEYS entry {entry}: unknown field `{unknown[0]}` "
            f"(the fields are {', '.join(_KEY_FIELDS)})"
        )
    given = item.get("key")
    if not isinstance(given, str) or not _real_key(given.strip()):
        raise ConfigError(
            f"invalid setting: API_KEYS entry {entry}: `key` must be text of at least 16 characters, "
            "not a placeholder"
        )
    for name in ("priority", "max_priority"):
        if item.get(name, "normal") not in PRIORITIES:
            raise ConfigError(
                f"invalid setting: API_KEYS entry {entry}: `{name}` must be {_either(PRIORITIES)}, "
                f"got {item[name]!r}"
            )
    most = item.get("max_priority")
    # Without its own `priority`, a capped key's default is `normal`, or its cap when that is lower.
    priority = item.get("priority", "normal" if most is None else lower_priority(most, "normal"))
    if most is not None and PRIORITIES.index(priority) < PRIORITIES.index(most):
        raise ConfigError(
            f"invalid setting: API_KEYS entry {entry}: `priority` {priority!r} is above its "
            f"`max_priority` {most!r}"
        )
    return KeyPolicy(
        key=given.strip(),
        uploads_per_minute=_limit(
            entry, "uploads_per_minute", item.get("uploads_per_minute"), MAX_UPLOADS_PER_MINUTE
        ),
        max_pending=_limit(entry, "max_pending", item.get("max_pending"), MAX_PENDING_LIMIT),
        priority=priority,
        max_priority=most,
    )


def _key_policies(raw: list[Any] | str) -> tuple[KeyPolicy, ...]:
    """API_KEYS: each entry a key (text) or a table `{key, uploads_per_minute, max_pending,
    priority}`. A key given twice with different limits is refused: which one applies would be a
    guess."""
    policies: dict[str, KeyPolicy] = {}
    for entry, item in enumerate(_key_items(raw), start=1):
        policy = _key_policy(entry, _plain(item))
        if policy is None:
            continue
        if policies.get(policy.key, policy) != policy:
            raise ConfigError(
                f"invalid setting: API_KEYS entry {entry} repeats an earlier entry's key with other limits"
            )
        policies.setdefault(policy.key, policy)
    return tuple(policies.values())


def _asyncpg_url(url: str) -> str:
    """Accept the plain `postgresql://` form operators tend to paste, and use the asyncpg driver."""
    scheme, rest = url.split("://", 1)
    return url if scheme == "postgresql+asyncpg" else f"postgresql+asyncpg://{rest}"


def _real_key(key: str) -> bool:
    return len(key) >= 16 and key not in _PLACEHOLDER_KEYS


@dataclass(frozen=True)
class Settings:
    database_url: str = field(
        metadata=setting(
            "postgresql+asyncpg://postgres:postgres@localhost:5432/imagequeue",
            check=lambda url: bool(_POSTGRES_URL.fullmatch(url)),
            rule="be a postgresql:// URL",
            convert=_asyncpg_url,
        )
    )
    nats_url: str = field(
        metadata=setting(
            "nats://localhost:4222",
            check=lambda url: all(_NATS_URL.fullmatch(part.strip()) for part in url.split(",")),
            rule="be nats:// URLs (comma-separated for a cluster)",
        )
    )
    uploads_dir: Path = field(metadata=setting("uploads"))
    processed_dir: Path = field(metadata=setting("processed"))
    max_upload_bytes: int = field(metadata=setting(25 * 1024 * 1024, gt=0))
    max_image_pixels: int = field(metadata=setting(50_000_000, gt=0))
    max_frames: int = field(metadata=setting(500, gt=0))
    # Resumable (tus) uploads at /files/ (api/routes/resumable.py): how long one may take from its
    # creation, and how many unfinished ones each API key (or all callers without one) may hold.
    tus_expiry_seconds: float = field(metadata=setting(24 * 3600, ge=60))
    tus_max_open_uploads: int = field(metadata=setting(20, gt=0))
    # uvicorn processes `python -m api.serve` runs on one socket (api/supervisor.py). Every per-process
    # bound below (connections, the database pools, uploads in progress) is each process's: the
    # totals are this many times them. Default 1: one process, no supervisor.
    api_processes: int = field(metadata=setting(1, ge=1, le=MAX_API_PROCESSES))
    # The API's HTTP limits (api/http_limits.py), per API process.
    http_max_header_bytes: int = field(metadata=setting(32 * 1024, ge=1024))
    http_max_headers: int = field(metadata=setting(100, ge=10))
    http_header_timeout_seconds: float = field(metadata=setting(10, gt=0))
    http_body_idle_timeout_seconds: float = field(metadata=setting(15, gt=0))
    http_body_min_bytes_per_second: int = field(metadata=setting(1024, gt=0))
    http_max_connections: int = field(metadata=setting(1000, ge=10))
    watermark_text: str = field(
        metadata=setting(
            "AI magic added!", check=lambda text: 1 <= len(text) <= 200, rule="be text of 1 to 200 characters"
        )
    )
    worker_concurrency: int = field(metadata=setting(os.cpu_count() or 1, gt=0))
    ack_wait_seconds: float = field(metadata=setting(30, gt=0, le=30))
    # Attempts counted in the task's row (JetStream's own delivery limit is off: a database outage
    # redelivers without end and must not use them up).
    max_attempts: int = field(metadata=setting(5, gt=0, old_name="MAX_DELIVER"))
    retry_delay_seconds: float = field(metadata=setting(5, gt=0))
    outbox_interval_seconds: float = field(metadata=setting(5, gt=0))
    # How often each API removes the outputs reprocessing replaced and steps its bulk jobs.
    reprocess_interval_seconds: float = field(metadata=setting(1, gt=0))
    # Tasks not final yet that the API lets into the stream at once (api/dispatcher.py); the rest
    # wait in PostgreSQL, where priority and fairness between keys choose the next. 0: no limit.
    # Off (0) by default: a pass no longer grows with the backlog, but with a window of 32 a drain of
    # 2,000 on one 2-core machine still measured 0.67x the rate of none (the dispatcher's passes and
    # publishes share the CPUs; BENCHMARKS.md, "Priorities and fair share"); on where priorities matter.
    dispatch_window: int = field(metadata=setting(0, ge=0))
    # Places past a full window that only `interactive` tasks may take (api/dispatcher.py), so an
    # urgent upload enters the stream at once instead of when a render ends; best at the number of
    # workers, each of which runs one in its urgent lane (WORKER_URGENT_LANES). 0: none (the window
    # alone, as before). Only meaningful with DISPATCH_WINDOW > 0.
    dispatch_urgent_places: int = field(metadata=setting(1, ge=0, le=1000))
    # A bulk reprocess job keeps at most this many of its tasks queued at once (a request may ask
    # for fewer), so the workers take interactive uploads between them.
    reprocess_job_max_in_flight: int = field(metadata=setting(4, gt=0, le=1000))
    # The most tasks one bulk reprocess job may match; a larger match is refused (narrow it by date).
    reprocess_job_max_tasks: int = field(metadata=setting(10_000, gt=0, le=1_000_000))
    # A bulk reprocess job that ended (done or cancelled) is deleted this long after, by the API's
    # sweep (its tasks stay); 0 keeps jobs for ever. Default: 7 days.
    job_retention_seconds: float = field(metadata=setting(7 * 24 * 3600, ge=0))
    lost_after_seconds: float = field(
        metadata=setting(300, ge=60, rule="be at least 60 (longer than any upload)")
    )
    # Each entry a key, or a table with the key's limits and default priority (KeyPolicy).
    api_keys: tuple[KeyPolicy, ...] = field(
        metadata=setting(
            [],
            rule="be a list of keys of at least 16 characters, or tables with `key`",
            convert=_key_policies,
            secret=True,
        )
    )
    # A relative path is taken from the worker's working folder, unlike the two folders above.
    worker_heartbeat_file: Path | None = field(metadata=setting(""))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = field(metadata=setting("INFO"))
    log_format: Literal["text", "json"] = field(metadata=setting("text"))
    # OpenTelemetry's own variable (core/tracing.py): traces are exported by OTLP/HTTP to
    # <endpoint>/v1/traces when it is set, and nothing is traced (nor the SDK loaded) when empty.
    otel_exporter_otlp_endpoint: str = field(
        metadata=setting(
            "",
            check=lambda url: url == "" or bool(_HTTP_URL.fullmatch(url)),
            rule="be empty (no traces) or an http:// or https:// URL",
        )
    )
    retention_days: int = field(
        metadata=setting(0, ge=0, rule="be a whole number of days, 0 to keep everything")
    )
    # Operator presets by name, as given (core.processing.presets.build_presets validates them).
    presets: dict[str, Any] = field(
        metadata=setting({}, rule="be a table of preset name -> {description, ops}")
    )
    max_output_pixels: int = field(metadata=setting(50_000_000, gt=0))
    keep_metadata: bool = field(metadata=setting(False))
    # Off: outputs are sRGB, converted through the input's ICC profile (worker.imaging._colour_plan).
    keep_icc_profiles: bool = field(metadata=setting(False))
    # WebP encoder effort 0-6. Measured on a 12 MP photo at quality 80 (README, "Speed"): 0 encodes
    # 4.4× faster than Pillow's default 4, for a file 3% larger.
    webp_method: int = field(metadata=setting(0, ge=0, le=6))
    worker_pool: Literal["threads", "processes"] = field(metadata=setting("threads"))
    # Renders beyond WORKER_CONCURRENCY that only an `interactive` task may take, when the regular
    # ones are all busy (worker/lanes.py): an urgent upload never waits for a bulk render to end.
    # 0: none. Each is one more light render's memory at most (README, "Priorities and fair share").
    worker_urgent_lanes: int = field(metadata=setting(1, ge=0, le=16))
    # A render estimated to touch more pixels than this (decode, every step and encode, every frame:
    # core.processing.cost.render_pixels) is heavy: it runs in a child process of its own, one at a
    # time, and is killed past RENDER_TIMEOUT_SECONDS. At ~35 ns a pixel-step (BENCHMARKS.md,
    # "Admission by cost"), the light renders left in the pool take a few seconds at most.
    heavy_render_pixels: int = field(metadata=setting(100_000_000, gt=0))
    # A 50 MP photo with the default preset renders in 0.6 s, with 8 blur/sharpen steps in 17 s
    # (one core of this project's 2-core bench machine): a minute leaves room for a loaded machine.
    render_timeout_seconds: float = field(metadata=setting(60, gt=0))
    webhook_secret: str = field(
        metadata=setting(
            "",
            check=lambda secret: secret == "" or _real_key(secret),
            rule="be empty (callbacks off) or at least 16 characters",
            secret=True,
        )
    )
    webhook_allow_private: bool = field(metadata=setting(False))
    webhook_max_attempts: int = field(metadata=setting(8, gt=0))
    webhook_retry_seconds: float = field(metadata=setting(5, gt=0))
    webhook_timeout_seconds: float = field(metadata=setting(10, gt=0))
    # Import by URL (`POST /upload` with a `url` field; api/url_import.py): off unless asked for.
    url_import: bool = field(metadata=setting(False))
    url_import_allow_private: bool = field(metadata=setting(False))
    url_import_timeout_seconds: float = field(metadata=setting(30, gt=0, le=300))
    # Direct uploads (`POST /uploads`, s3 backend only): how long the presigned POST is good for.
    direct_upload_expires_seconds: int = field(metadata=setting(900, ge=60, le=12 * 3600))
    worker_metrics_port: int = field(
        metadata=setting(9101, ge=0, le=65535, rule="be a TCP port (1-65535), or 0 for off")
    )
    stream_replicas: int = field(metadata=setting(1, ge=1, le=MAX_REPLICAS))
    consumer_replicas: int = field(
        metadata=setting(
            0, ge=0, le=MAX_REPLICAS, rule=f"be a whole number from 0 (same as the stream) to {MAX_REPLICAS}"
        )
    )
    # Where uploads and outputs are kept: `local` (UPLOADS_DIR and PROCESSED_DIR, shared by every
    # process) or `nats` (JetStream object store buckets; the folders are then scratch space only).
    storage_backend: Literal["local", "nats", "s3"] = field(metadata=setting("local"))
    # The `s3` backend (core/storage/s3.py): one bucket of any S3-compatible store; credentials come
    # from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, a role).
    # Empty endpoint: AWS itself.
    s3_endpoint_url: str = field(
        metadata=setting(
            "",
            check=lambda url: url == "" or bool(_HTTP_URL.fullmatch(url)),
            rule="be empty (AWS) or an http:// or https:// URL",
        )
    )
    s3_region: str = field(metadata=setting("us-east-1"))
    s3_bucket: str = field(
        metadata=setting(
            "imagequeue",
            check=lambda name: bool(_BUCKET_NAME.fullmatch(name)),
            rule="be a bucket name: 3 to 63 lower-case letters, digits, dots and hyphens",
        )
    )
    s3_prefix: str = field(
        metadata=setting(
            "imagequeue/",
            check=lambda prefix: prefix == "" or bool(_KEY_PREFIX.fullmatch(prefix)),
            rule="be empty or a key prefix ending in / (letters, digits, and . _ - /)",
        )
    )
    # Files above this go up as multipart uploads, one part in memory at a time (S3's floor: 5 MiB).
    s3_part_size_bytes: int = field(
        metadata=setting(8 * 1024 * 1024, ge=5 * 1024 * 1024, le=512 * 1024 * 1024)
    )
    # On: /processed/... and originals answer 302 to a presigned GET (bytes never pass the API).
    s3_presigned_downloads: bool = field(metadata=setting(False))
    s3_presigned_expires_seconds: int = field(metadata=setting(300, ge=1, le=7 * 24 * 3600))
    # Image watermarks for the `overlay` op, name -> file (relative paths from the project folder).
    # The API checks only the names; each worker loads every file at start-up and refuses to start
    # on one it cannot use (worker/overlays.py).
    watermark_images: dict[str, Path] = field(
        metadata=setting(
            {},
            check=lambda images: all(
                _IMAGE_NAME.fullmatch(str(name)) and isinstance(path, str) and path
                for name, path in images.items()
            ),
            rule="be a table of name (letters, digits, - and _) -> image file",
        )
    )

    @property
    def log_json(self) -> bool:
        return self.log_format == "json"


@dataclass(frozen=True)
class _Reading:
    """How values of one field type are read: what the type accepts, and how its errors name it."""

    accepts: Callable[[Any], bool]
    noun: str
    convert: Callable[[Any], Any]
    # The TOML parser reads some text as numbers or booleans (WATERMARK_TEXT=2024): a text type
    # takes them back as the text they were.
    text: bool = False


def _whole(value: object) -> bool:
    """TOML and environment values parse `true` as a bool, which Python also counts as an int."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """Dynaconf's boxed tables and lists as plain dicts and lists (with their key case kept)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _either(options: tuple[object, ...]) -> str:
    quoted = [f"`{option}`" for option in options]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _reading(hint: Any) -> _Reading:
    """The reading of a `Settings` field's type (a type without one is a mistake in `Settings`)."""
    if hint is bool:
        return _Reading(lambda value: isinstance(value, bool), "true or false", bool)
    if hint is int:
        return _Reading(_whole, "a whole number", int)
    if hint is float:
        return _Reading(_number, "a number", float)
    if hint is str:
        return _Reading(lambda value: isinstance(value, str), "text", str, text=True)
    if hint is Path:
        # Relative folders are taken from the project folder, whatever the working folder.
        return _Reading(
            lambda value: isinstance(value, str) and value != "",
            "a folder",
            lambda value: (PROJECT_ROOT / value).resolve(),
            text=True,
        )
    if hint == Path | None:
        return _Reading(
            lambda value: isinstance(value, str),
            "a file, or empty for none",
            lambda value: Path(value) if value else None,
            text=True,
        )
    if get_origin(hint) is Literal:
        options = get_args(hint)
        return _Reading(lambda value: value in options, _either(options), str)
    if hint == tuple[KeyPolicy, ...]:
        return _Reading(lambda value: isinstance(value, list | str), "a list", _key_policies)
    if hint == dict[str, Any]:
        return _Reading(lambda value: isinstance(value, dict), "a table", _plain)
    if hint == dict[str, Path]:
        return _Reading(
            lambda value: isinstance(value, dict),
            "a table of files",
            lambda value: {str(name): (PROJECT_ROOT / path).resolve() for name, path in value.items()},
        )
    raise TypeError(f"config.Settings: no reading for fields of type {hint}")


@dataclass(frozen=True)
class _Declared:
    name: str
    attribute: str
    reading: _Reading
    declaration: Declaration

    def rule(self) -> str:
        """What a good value is, for the error message: the declaration's words, or the type's and
        bounds'."""
        if self.declaration.rule:
            return self.declaration.rule
        gt, ge, le = self.declaration.gt, self.declaration.ge, self.declaration.le
        noun = self.reading.noun
        if ge is not None and le is not None:
            return f"be {noun} from {ge} to {le}"
        if gt is not None and le is not None:
            return f"be {noun} above {gt} and at most {le}"
        if gt is not None:
            return f"be {noun} above {gt}"
        if ge is not None:
            return f"be {noun} of at least {ge}"
        if le is not None:
            return f"be {noun} of at most {le}"
        return f"be {noun}"

    def read(self, value: Any, given_as: str) -> Any:
        """The attribute's value for `value` as the layers give it (under the name `given_as`);
        ConfigError if it is bad."""
        if self.reading.text and isinstance(value, int | float | bool):
            value = str(value)
        declaration = self.declaration
        if (
            self.reading.accepts(value)
            and (declaration.gt is None or value > declaration.gt)
            and (declaration.ge is None or value >= declaration.ge)
            and (declaration.le is None or value <= declaration.le)
            and (declaration.check is None or declaration.check(value))
        ):
            return (declaration.convert or self.reading.convert)(value)
        name = self.name if given_as == self.name else f"{self.name} (set as {given_as})"
        got = "" if declaration.secret else f", got {value!r}"
        raise ConfigError(f"invalid setting: {name} must {self.rule()}{got}")


@cache
def _declared() -> tuple[_Declared, ...]:
    hints = get_type_hints(Settings)
    return tuple(
        _Declared(
            name=item.name.upper(),
            attribute=item.name,
            reading=_reading(hints[item.name]),
            declaration=item.metadata["setting"],
        )
        for item in fields(Settings)
    )


# Every setting's default, by name (the tests compare deployment files and the example with it).
_DEFAULTS: dict[str, object] = {
    item.name.upper(): item.metadata["setting"].default for item in fields(Settings)
}


def _check_replicas(stream: int, consumer: int) -> None:
    """JetStream requires a work-queue stream's consumers to have the stream's replica count (it
    answers error 10134 otherwise): say so at start-up rather than when the first worker connects."""
    if consumer not in (0, stream):
        raise ConfigError(
            f"invalid setting: CONSUMER_REPLICAS must be 0 or equal to STREAM_REPLICAS ({stream}) for a "
            f"work-queue stream, got {consumer}"
        )


def _layers() -> Dynaconf:
    """`.secrets.toml` and the environment, without our defaults."""
    return Dynaconf(
        envvar_prefix=False,
        environments=False,
        load_dotenv=False,
        root_path=str(PROJECT_ROOT),
        settings_files=[".secrets.toml"],
    )


_UNSET = object()


def _given(layers: Dynaconf, declared: _Declared) -> tuple[object, object]:
    """What `.secrets.toml` or the environment give a setting under its name and under its old one
    (`_UNSET` where they give nothing)."""
    old_name = declared.declaration.old_name
    old = layers.get(old_name, _UNSET) if old_name else _UNSET
    return layers.get(declared.name, _UNSET), old


def _value(layers: Dynaconf, declared: _Declared) -> tuple[object, str]:
    """The setting's value before it is read (from the layers, else the default), and the name it
    was given under. An old name alone still works, with a warning; given both names, start-up stops
    unless they agree, rather than quietly dropping one of the operator's values."""
    value, old = _given(layers, declared)
    if old is _UNSET:
        return (declared.declaration.default if value is _UNSET else value), declared.name
    old_name = declared.declaration.old_name
    if value is not _UNSET and value != old:
        raise ConfigError(
            f"invalid setting: {old_name} is the old name of {declared.name} and they disagree "
            f"({old!r} and {value!r}): set {declared.name} only"
        )
    log.warning("setting %s is deprecated: call it %s", old_name, declared.name)
    return old, old_name


def configured_names() -> set[str]:
    """The settings that `.secrets.toml` or the environment give a value (the rest are defaults)."""
    layers = _layers()
    return {
        declared.name
        for declared in _declared()
        if any(value not in (_UNSET, None, "") for value in _given(layers, declared))
    }


def load_settings() -> Settings:
    """Read and validate every layer now; raise ConfigError naming the first bad setting."""
    layers = _layers()
    values = {declared.attribute: declared.read(*_value(layers, declared)) for declared in _declared()}
    _check_replicas(values["stream_replicas"], values["consumer_replicas"])
    return Settings(**values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use (tests call `get_settings.cache_clear()`)."""
    return load_settings()
