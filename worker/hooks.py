"""Things that happen around every job but must never change its outcome: metrics and
notifications. Each hook swallows (and logs) its own errors."""

from __future__ import annotations

import logging

log = logging.getLogger("taiga_backup.hooks")


def job_started(settings, kind: str, task_id: str) -> None:
    """Called when a job has taken the repository lease."""


def job_finished(settings, report: dict) -> None:
    """Called with the final report (state SUCCESS or FAILURE) after it was stored in Redis."""
