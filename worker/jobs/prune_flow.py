"""The prune (`taiga_backup.prune` runs it): the retention policy applied to both repositories,
backups kept or removed whole (worker.backups.retention decides which)."""

from __future__ import annotations

from worker.adapters.redis_store import connect as redis_connect
from worker.backups import layout, restic_locks, retention
from worker.jobs.job import Job


def prune_repositories(job: Job, dry_run: bool = False) -> dict:
    settings = job.settings
    with job.step("plan"):
        result = retention.plan(settings)
    result["dry_run"] = dry_run
    if dry_run:
        return result
    redis_client = redis_connect(settings)

    def forget(name: str) -> None:
        ids = [s["id"] for s in result["repositories"][name]["remove"]]
        with job.step(f"forget_{name}") as entry:
            entry["snapshots_removed"] = len(ids)
            if ids:
                repo = layout.repository(settings, name)
                entry.update(restic_locks.make_way(settings, repo, redis_client, exclusive=True,
                                                   on_wait=lambda msg: job.progress(f"forget_{name}", None, msg)))
                repo.forget(*ids, prune=True, timeout=settings.prune_timeout)

    job.in_parallel({name: (lambda n=name: forget(n)) for name in result["repositories"]})
    return result
