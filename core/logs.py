"""Log set-up shared by the API and the worker: readable text by default, JSON lines on request,
and the id of the task (worker) or request (API) being handled on every line logged while it is,
with the trace id (core/tracing.py) when the line is logged inside a span.

The ids travel in context variables, so code deep in a call chain logs them without passing them
along; `asyncio` copies the context into each task, so concurrent tasks never mix them up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from core.tracing import current_trace_id

_task_id: ContextVar[int | None] = ContextVar("task_id", default=None)
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


@contextmanager
def _bound(variable: ContextVar[Any], value: object) -> Iterator[None]:
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def task_context(task_id: int) -> AbstractContextManager[None]:
    return _bound(_task_id, task_id)


def request_context(request_id: str) -> AbstractContextManager[None]:
    return _bound(_request_id, request_id)


class _ContextFilter(logging.Filter):
    """Adds `task_id`, `request_id` and a ready-made `context` text to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id, request_id = _task_id.get(), _request_id.get()
        trace_id = current_trace_id()
        parts = []
        if task_id is not None:
            parts.append(f"task={task_id}")
        if request_id is not None:
            parts.append(f"request={request_id}")
        if trace_id is not None:
            parts.append(f"trace={trace_id}")
        # Extra attributes, as `logging`'s own `extra=` sets them (LogRecord declares none).
        record.__dict__.update(
            task_id=task_id,
            request_id=request_id,
            trace_id=trace_id,
            context=f" [{' '.join(parts)}]" if parts else "",
        )
        return True


class _NamedFailures(logging.Filter):
    """An exception logged as an argument (`log.warning("... failed: %s", exc)`) whose text is empty,
    as a TimeoutError's or a CancelledError's is, is logged by its type instead: every logged
    failure says what failed, whichever call site wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_unnamed(arg) for arg in args):
            record.args = tuple(_named(arg) for arg in args)
        elif isinstance(args, dict) and any(_unnamed(arg) for arg in args.values()):
            record.args = {key: _named(arg) for key, arg in args.items()}
        return True


def _unnamed(arg: object) -> bool:
    if not isinstance(arg, BaseException):
        return False
    try:
        return not str(arg)
    except Exception:  # an exception whose __str__ raises: left to the formatter's own handling
        return False


def _named(arg: object) -> object:
    return type(arg).__name__ if _unnamed(arg) else arg


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("task_id", "request_id", "trace_id"):
            if getattr(record, key, None) is not None:
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, *, json_lines: bool) -> None:
    """One handler on the root logger, for the process's whole life (called once at start-up)."""
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    handler.addFilter(_NamedFailures())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
