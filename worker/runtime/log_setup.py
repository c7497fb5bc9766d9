"""LOG_FORMAT=json: the worker's log as one JSON object per line, for a log pipeline to index.

Fields: ts (UTC), level, logger, message, task_id when the line belongs to a task, and for step
lines job, step and duration_seconds. The root handler is put in place when the worker program
starts, before Celery's first warning; Celery keeps a root logger that already has a handler, and
the handlers it adds itself (the task logger's) get the JSON formatter. The redaction filter runs
before any formatter, so it keeps working. The start-up banner is left out; one line is beyond
reach: Celery writes "worker: Warm shutdown (MainProcess)" straight to stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from celery import current_task

EXTRA_FIELDS = ("job", "step", "duration_seconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
               .replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        task_id = getattr(record, "task_id", None) or _current_task_id()
        if task_id:
            doc["task_id"] = task_id
        doc.update({name: getattr(record, name) for name in EXTRA_FIELDS if hasattr(record, name)})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, default=str)


def _current_task_id() -> str | None:
    """Celery's task context is per thread: step threads carry task_id in the record instead."""
    try:
        return current_task.request.id if current_task else None
    except Exception:
        return None


def log_format() -> str:
    """LOG_FORMAT alone: logging is set up before (and apart from) the full settings, and must
    not read every secret file to learn one word."""
    from worker.settings import SettingsError, read

    try:
        return read("LOG_FORMAT")
    except SettingsError:
        return "text"  # the worker stops at start, naming the variable


def json_from_the_start(instance=None) -> None:
    """Before Celery's first warning and its logging set-up: a root logger that already has a
    handler is kept as it is by Celery, so every line from here on is JSON."""
    if log_format() != "json":
        return
    if instance is not None:
        instance.quiet = True  # no banner
    root = logging.getLogger()
    if not root.handlers:
        from worker.redact import RedactingFilter

        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    json_handlers(root)
    logging.captureWarnings(True)


def json_handlers(logger) -> None:
    if logger is not None and log_format() == "json":
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())
