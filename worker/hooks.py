"""Things that happen around every job but must never change its outcome: metrics and
notifications. Each part swallows (and logs) its own errors, so one failing never skips the other."""

from __future__ import annotations

import logging

from . import metrics, notify, redact

log = logging.getLogger("taiga_backup.hooks")


def _each(*calls) -> None:
    for fn, *args in calls:
        try:
            fn(*args)
        except Exception as exc:
            log.warning("%s.%s failed: %s", fn.__module__, fn.__name__, redact.redact(str(exc)))


def job_started(settings, kind: str, task_id: str) -> None:
    """Called when a job has taken the repository lease."""
    _each((metrics.job_started, kind), (notify.job_started, settings, kind))


def job_finished(settings, report: dict) -> None:
    """Called with the final report (state SUCCESS or FAILURE) after it was stored in Redis."""
    _each((metrics.job_finished, settings, report), (notify.job_finished, settings, report))
