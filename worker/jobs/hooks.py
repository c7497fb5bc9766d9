"""Things that happen around every job but must never change its outcome: metrics and
notifications. Each part swallows (and logs) its own errors, so one failing never skips the other."""

from __future__ import annotations

import json
import logging
import time

from worker import redact
from worker.adapters import metrics, notify, redis_store
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


def repository_facts(settings) -> dict[str, dict]:
    """Snapshots and stored bytes of each repository, for the metrics and the fleet view; what cannot be read is left
    out (and logged), a repository that does not exist yet counts 0 (the first backup makes it)."""
    facts: dict[str, dict] = {}
    for name, repo in layout.both(settings).items():
        try:
            facts[name] = {"snapshots": len(repo.snapshots()), "size_bytes": repo.stored_bytes()}
        except Exception as exc:
            if getattr(exc, "kind", None) == "no-repository":
                facts[name] = {"snapshots": 0, "size_bytes": 0}
            else:
                log.warning("metrics: could not read the repository %s: %s", name, exc)
    _each((_record_facts, settings, facts))
    return facts


def _record_facts(settings, facts: dict) -> None:
    """The same facts for the fleet view (`taiga-backup fleet`), which reads Redis, not Prometheus."""
    if facts:
        redis_store.record_fleet(redis_store.connect(settings), settings.instance, redis_store.FLEET_REPOSITORIES,
                                 json.dumps({"counted_at": int(time.time()), "repositories": facts}, sort_keys=True))
