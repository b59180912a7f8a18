"""Log lines carry the task or request they concern, as text or as JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from core.logs import configure_logging, request_context, task_context


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_name_the_task_they_concern(
    restore_root_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json_lines=False)
    log = logging.getLogger("worker.consumer")

    with task_context(41):
        log.info("stamped")
    log.info("idle")

    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith("INFO worker.consumer [task=41]: stamped")
    assert second.endswith("INFO worker.consumer: idle")


def test_json_lines_carry_task_and_request_ids(
    restore_root_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json_lines=True)
    log = logging.getLogger("api.main")

    with request_context("req-1"), task_context(9):
        log.warning("téléversé")

    entry = json.loads(capsys.readouterr().err)
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "api.main", "téléversé")
    assert (entry["task_id"], entry["request_id"]) == (9, "req-1")


@pytest.mark.parametrize("json_lines", [False, True])
def test_an_exception_without_text_is_logged_by_its_type(
    restore_root_logger: None, capsys: pytest.CaptureFixture[str], json_lines: bool
) -> None:
    configure_logging("INFO", json_lines=json_lines)
    log = logging.getLogger("worker.consumer")

    log.warning("renewal failed: %s", TimeoutError())
    log.warning("pass failed: %s", ConnectionResetError("peer gone"))
    log.warning("step %(step)s failed: %(error)s", {"step": "claim", "error": TimeoutError()})

    lines = capsys.readouterr().err.splitlines()
    messages = [json.loads(line)["message"] for line in lines] if json_lines else lines
    assert messages[0].endswith("renewal failed: TimeoutError")
    assert messages[1].endswith("pass failed: peer gone"), "an exception with text keeps it"
    assert messages[2].endswith("step claim failed: TimeoutError")
