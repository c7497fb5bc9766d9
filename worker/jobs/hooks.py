"""Things that happen around every job but must never change its outcome: metrics and
notifications. Each part swallows (and logs) its own errors, so one failing never skips the other."""

from __future__ import annotations

import logging

from worker import redact
from worker.adapters import metrics, notify
from worker.backups import layout

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
    _each((metrics.job_finished, report), (notify.job_finished, settings, report))


def snapshot_counts(settings) -> dict[str, int]:
    """Snapshots in each repository, for the metrics; a repository that cannot be read is left
    out (and logged), one that does not exist yet counts 0 (the first backup makes it)."""
    counts = {}
    for name, repo in layout.both(settings).items():
        try:
            counts[name] = len(repo.snapshots())
        except Exception as exc:
            if getattr(exc, "kind", None) == "no-repository":
                counts[name] = 0
            else:
                log.warning("metrics: could not count the snapshots of %s: %s", name, exc)
    return counts
