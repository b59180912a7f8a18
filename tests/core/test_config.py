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

    assert load_settings().api_keys == ("first-key-0123456789", "second-key-0123456789")


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
