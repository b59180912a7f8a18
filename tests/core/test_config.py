"""Settings: defaults, then .secrets.toml, then the environment; bad values stop start-up by name."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

import config
from config import PROJECT_ROOT, ConfigError, load_settings

NAMES = (
    "DATABASE_URL",
    "NATS_URL",
    "UPLOADS_DIR",
    "PROCESSED_DIR",
    "MAX_UPLOAD_BYTES",
    "WATERMARK_TEXT",
    "MAX_ATTEMPTS",
    "MAX_DELIVER",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    # An empty settings file stands in for a developer's own .secrets.toml.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(empty))


def test_defaults_need_nothing_set() -> None:
    settings = load_settings()

    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.nats_url == "nats://localhost:4222"
    assert settings.uploads_dir.name == "uploads" and settings.processed_dir.name == "processed"
    assert settings.watermark_text == "AI magic added!"
    assert settings.max_upload_bytes > 0 and settings.worker_concurrency >= 1


def test_the_secrets_file_overrides_defaults_and_the_environment_overrides_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('WATERMARK_TEXT = "from the file"\nMAX_UPLOAD_BYTES = 1234\n')
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(secrets))
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "4321")

    settings = load_settings()

    assert settings.watermark_text == "from the file"
    assert settings.max_upload_bytes == 4321


def test_a_plain_postgresql_url_gets_the_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/imagequeue")

    assert load_settings().database_url == "postgresql+asyncpg://u:p@db:5432/imagequeue"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://u@db/x"),
        ("NATS_URL", "http://nats:4222"),
        ("MAX_UPLOAD_BYTES", "-1"),
        ("MAX_UPLOAD_BYTES", "lots"),
        ("ACK_WAIT_SECONDS", "90"),
        ("LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "postgresql"),
        ("NATS_URL", "nats"),
        ("ACK_WAIT_SECONDS", "true"),
        ("MAX_FRAMES", "true"),
        ("MAX_ATTEMPTS", "0"),
        ("LOST_AFTER_SECONDS", "5"),
        ("API_KEYS", "short"),
        ("WORKER_METRICS_PORT", "70000"),
        ("WORKER_METRICS_PORT", "-1"),
        ("WATERMARK_IMAGES", "logo.png"),
        ("WATERMARK_IMAGES", '@json {"no spaces": "logo.png"}'),
        ("WATERMARK_IMAGES", '@json {"logo": ""}'),
        ("WATERMARK_IMAGES", '@json {"logo": 5}'),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://collector:4317"),
        ("STORAGE_BACKEND", "s4"),
        ("S3_BUCKET", "ab"),
        ("S3_BUCKET", "Upper-Case"),
        ("S3_BUCKET", "x" * 64),
        ("S3_PREFIX", "/leading-slash/"),
        ("S3_PREFIX", "no-trailing-slash"),
        ("S3_ENDPOINT_URL", "ftp://store.example"),
        ("S3_PART_SIZE_BYTES", "1048576"),
        ("S3_PRESIGNED_EXPIRES_SECONDS", "0"),
    ],
)
def test_a_bad_value_fails_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_the_example_secrets_file_lists_every_setting_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    example = PROJECT_ROOT / ".secrets.example.toml"
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(example))

    assert set(tomllib.loads(example.read_text())) == set(config._DEFAULTS)
    assert load_settings().watermark_text == "AI magic added!"


def test_watermark_images_are_files_by_name_from_the_project_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATERMARK_IMAGES", '@json {"logo": "art/logo.png", "seal": "/etc/seal.webp"}')

    assert load_settings().watermark_images == {
        "logo": PROJECT_ROOT / "art" / "logo.png",
        "seal": Path("/etc/seal.webp"),
    }


def test_text_settings_stay_text_even_when_they_look_like_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATERMARK_TEXT", "2024")

    assert load_settings().watermark_text == "2024"


def test_api_keys_come_as_a_list_or_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "first-key-0123456789, second-key-0123456789")

    assert [policy.key for policy in load_settings().api_keys] == [
        "first-key-0123456789",
        "second-key-0123456789",
    ]


def test_configured_names_are_those_given_by_a_file_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('NATS_URL = "nats://elsewhere:4222"\n')
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(secrets))
    monkeypatch.setenv("MAX_FRAMES", "10")

    assert {"NATS_URL", "MAX_FRAMES"} <= config.configured_names()
    assert "DATABASE_URL" not in config.configured_names()


def test_max_deliver_still_sets_max_attempts_with_a_warning_naming_the_new_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAX_DELIVER", "7")

    with caplog.at_level(logging.WARNING, logger="config"):
        settings = load_settings()

    assert settings.max_attempts == 7
    assert [record.getMessage() for record in caplog.records] == [
        "setting MAX_DELIVER is deprecated: call it MAX_ATTEMPTS"
    ]
    assert "MAX_ATTEMPTS" in config.configured_names()

    monkeypatch.setenv("MAX_DELIVER", "0")
    with pytest.raises(
        ConfigError, match=r"MAX_ATTEMPTS \(set as MAX_DELIVER\) must be a whole number above 0"
    ):
        load_settings()


def test_max_deliver_in_the_file_and_max_attempts_in_the_environment_must_agree(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("MAX_DELIVER = 5\n")
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(secrets))
    monkeypatch.setenv("MAX_ATTEMPTS", "5")
    assert load_settings().max_attempts == 5

    monkeypatch.setenv("MAX_ATTEMPTS", "2")
    with pytest.raises(ConfigError, match="MAX_DELIVER is the old name of MAX_ATTEMPTS and they disagree"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_UPLOAD_BYTES", "-1", "MAX_UPLOAD_BYTES must be a whole number above 0, got -1"),
        ("ACK_WAIT_SECONDS", "90", "ACK_WAIT_SECONDS must be a number above 0 and at most 30, got 90"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be `DEBUG`, `INFO`, `WARNING` or `ERROR`, got 'LOUD'"),
        ("KEEP_METADATA", "yes", "KEEP_METADATA must be true or false, got 'yes'"),
        ("UPLOADS_DIR", "", "UPLOADS_DIR must be a folder, got ''"),
        ("WEBP_METHOD", "7", "WEBP_METHOD must be a whole number from 0 to 6, got 7"),
        ("API_KEYS", "short", "API_KEYS must hold keys of at least 16 characters, none a placeholder"),
    ],
)
def test_a_bad_value_is_refused_in_words_that_say_what_is_wanted(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as refused:
        load_settings()

    assert str(refused.value) == f"invalid setting: {message}"


def test_an_api_key_may_be_a_table_with_its_limits_and_priority(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        'API_KEYS = ["plain-key-0123456789", '
        '{key = "bulk-key-0123456789", uploads_per_minute = 60, max_pending = 500, priority = "bulk"}]\n'
    )
    monkeypatch.setenv("SETTINGS_FILE_FOR_DYNACONF", str(secrets))

    plain, bulk = load_settings().api_keys

    assert plain == config.KeyPolicy("plain-key-0123456789") and not plain.limited
    assert (plain.uploads_per_minute, plain.max_pending, plain.priority) == (None, None, "normal")
    assert bulk == config.KeyPolicy("bulk-key-0123456789", 60, 500, "bulk") and bulk.limited
    # A settings object in a log or a traceback does not show the keys.
    assert "0123456789" not in repr(load_settings())


def test_a_key_may_cap_the_priority_its_uploads_ask_for_and_defaults_under_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "API_KEYS",
        '[{key="capped-key-0123456789", max_priority="normal"},'
        ' {key="bulk-only-key-0123456789", max_priority="bulk"},'
        ' {key="low-default-key-0123456789", priority="bulk", max_priority="normal"}]',
    )

    capped, bulk_only, low_default = load_settings().api_keys

    assert (capped.priority, capped.max_priority) == ("normal", "normal")
    assert (bulk_only.priority, bulk_only.max_priority) == ("bulk", "bulk"), "the default is under the cap"
    assert (low_default.priority, low_default.max_priority) == ("bulk", "normal")
    assert config.KeyPolicy("plain-key-0123456789").max_priority is None, "no cap unless asked"


@pytest.mark.parametrize(
    "value",
    [
        '[{key="env-key-0123456789", uploads_per_minute=0}]',
        '@json [{"key": "env-key-0123456789", "uploads_per_minute": 0}]',
        '[{"key": "env-key-0123456789", "uploads_per_minute": 0}]',
    ],
    ids=["toml", "dynaconf-json", "plain-json"],
)
def test_key_tables_come_from_the_environment_as_toml_or_json(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("API_KEYS", value)

    assert load_settings().api_keys == (config.KeyPolicy("env-key-0123456789", uploads_per_minute=0),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '[{key="short"}]',
            "API_KEYS entry 1: `key` must be text of at least 16 characters, not a placeholder",
        ),
        (
            "[{uploads_per_minute=5}]",
            "API_KEYS entry 1: `key` must be text of at least 16 characters, not a placeholder",
        ),
        (
            '["good-key-0123456789", {key="a-second-key-0123456789", uploads_per_minit=5}]',
            "API_KEYS entry 2: unknown field `uploads_per_minit` (the fields are key, uploads_per_minute, "
            "max_pending, priority, max_priority)",
        ),
        (
            '[{key="a-key-0123456789", uploads_per_minute=-1}]',
            "API_KEYS entry 1: `uploads_per_minute` must be a whole number from 0 to 1000000, got -1",
        ),
        (
            '[{key="a-key-0123456789", max_pending="lots"}]',
            "API_KEYS entry 1: `max_pending` must be a whole number from 0 to 10000000, got 'lots'",
        ),
        (
            '[{key="a-key-0123456789", max_pending=true}]',
            "API_KEYS entry 1: `max_pending` must be a whole number from 0 to 10000000, got True",
        ),
        (
            '[{key="a-key-0123456789", priority="urgent"}]',
            "API_KEYS entry 1: `priority` must be `interactive`, `normal` or `bulk`, got 'urgent'",
        ),
        (
            '[{key="a-key-0123456789", max_priority="top"}]',
            "API_KEYS entry 1: `max_priority` must be `interactive`, `normal` or `bulk`, got 'top'",
        ),
        (
            '[{key="a-key-0123456789", priority="interactive", max_priority="normal"}]',
            "API_KEYS entry 1: `priority` 'interactive' is above its `max_priority` 'normal'",
        ),
        ("[5]", "API_KEYS entry 1 must be a key or a table with `key`"),
        (
            '["a-key-0123456789", {key="a-key-0123456789", max_pending=3}]',
            "API_KEYS entry 2 repeats an earlier entry's key with other limits",
        ),
        ('[{"key": "a-key-0123456789",}]', "API_KEYS starts with `[` but is not a JSON or TOML list"),
    ],
)
def test_a_bad_key_entry_stops_start_up_naming_the_entry_not_the_key(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("API_KEYS", value)

    with pytest.raises(ConfigError) as refused:
        load_settings()

    assert str(refused.value) == f"invalid setting: {message}"
    assert "0123456789" not in str(refused.value)
