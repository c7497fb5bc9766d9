"""`taiga_backup.backup`: the nightly chain quiesce -> dump_db -> restic_backup -> resume.

While the app is quiesced the database dump and the media backup run at the same time (they
write to different repositories); BACKUP_PARALLEL=false runs them one after the other. A backup
is good only if both snapshots were made and the app came back: otherwise the job fails and the
snapshots it made are forgotten, so `latest` never points at half a backup.
"""

from __future__ import annotations

import logging
import time

from worker.adapters import postgres
from worker.adapters.redis_store import connect as redis_connect
from worker.backups import layout, restic_locks
from worker.celery_app import app
from worker.jobs import requests, steps
from worker.jobs.job import Job, run_job

log = logging.getLogger("taiga_backup.backup")


def prepare(job: Job) -> dict:
    """Everything that can fail before the app is touched: database reachable, Kubernetes
    answering for every deployment (both checked before any repository is created or written),
    repositories present (created on first use) and unlocked - all within PREFLIGHT_TIMEOUT."""
    settings = job.settings
    deadline = time.monotonic() + settings.preflight_timeout
    with job.step("preflight") as entry:
        facts = postgres.preflight(settings)
        names = list(settings.quiesce_deployments)
        kube = steps.kube_for(job) if names else None
        if kube:
            kube.preflight(names)
        for repo in layout.both(settings).values():
            if repo.init_if_missing(timeout=max(1.0, deadline - time.monotonic())):
                entry.setdefault("initialised", []).append(repo.name)
            # stale locks of ours (crashed pods, other host names) go; a live holder is waited for
            done = restic_locks.make_way(settings, repo, redis_connect(settings), exclusive=False,
                                         on_wait=lambda msg: job.progress("preflight", None, msg))
            if done.get("locks_removed"):
                entry.setdefault("locks_removed", []).extend(done["locks_removed"])
        entry["database_bytes"] = facts["size_bytes"]
    return {"kube": kube, "names": names, "db_size": facts["size_bytes"]}


def take_backup(job: Job, trigger: str) -> dict:
    """The chain itself: prepare, quiesce, both snapshots, resume."""
    job.report.update(backup_id=steps.new_backup_id(), trigger=trigger)
    ctx = prepare(job)
    kube, names = ctx["kube"], ctx["names"]
    down_since = time.monotonic()
    results: dict = {}
    try:
        steps.quiesce(job, kube, names)
        results = steps.backup_quiesced(job, ctx["db_size"])
    finally:
        restored = steps.resume(job, kube, names)
        downtime = time.monotonic() - down_since
    report = {
        **steps.summarize(job.settings, results),
        "deployments": restored,
        "downtime_seconds": round(downtime, 3) if names else 0.0,
    }
    if job.errors:
        steps.discard(job, report["snapshots"])
        job.report.update(report)
    return report


@app.task(bind=True, name=requests.BACKUP)
def backup(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs `trigger` only; returns the JSON report."""
    trigger = requests.keyword_fields(requests.BACKUP, args, kwargs, {})["trigger"]
    return run_job(self, "backup", lambda job: take_backup(job, trigger))
