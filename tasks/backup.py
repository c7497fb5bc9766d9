"""`taiga_backup.backup`: the nightly chain quiesce -> dump_db -> restic_backup -> resume.

While the app is quiesced the database dump and the media backup run at the same time (they
write to different repositories); BACKUP_PARALLEL=false runs them one after the other. A backup
is good only if both snapshots were made and the app came back: otherwise the job fails and the
snapshots it made are forgotten, so `latest` never points at half a backup.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from worker import postgres, repositories, restic_locks
from worker.redis_client import connect as redis_connect
from worker.celery_app import app
from worker.process import ProcessError

from . import steps
from .job import Job, RequestInvalid, run_job

log = logging.getLogger("taiga_backup.backup")
TRIGGERS = ("manual", "schedule", "chat", "pre-restore")


def validate_kwargs(kwargs: dict) -> str:
    unknown = set(kwargs) - {"trigger"}
    if unknown:
        raise RequestInvalid(f"unknown argument(s) for taiga_backup.backup: {', '.join(sorted(map(str, unknown)))}")
    trigger = kwargs.get("trigger", "manual")
    if not isinstance(trigger, str) or trigger not in TRIGGERS:
        raise RequestInvalid(f"trigger must be one of {', '.join(TRIGGERS)}")
    return trigger


def new_backup_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


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
        for repo in repositories.both(settings).values():
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
    job.report.update(backup_id=new_backup_id(), trigger=trigger)
    ctx = prepare(job)
    kube, names = ctx["kube"], ctx["names"]
    down_since = time.monotonic()
    results: dict = {}
    try:
        steps.quiesce(job, kube, names)
        results = backup_quiesced(job, ctx["db_size"])
    finally:
        restored = steps.resume(job, kube, names)
        downtime = time.monotonic() - down_since
    report = {
        **summarize(job.settings, results),
        "deployments": restored,
        "downtime_seconds": round(downtime, 3) if names else 0.0,
    }
    if job.errors:
        discard(job, report["snapshots"])
        job.report.update(report)
    return report


def backup_quiesced(job: Job, db_size: int) -> dict:
    """dump_db and restic_backup, with the app already down; their results by repository (a
    failed one is missing and recorded on the job). Shared with restore's safety backup, which
    has quiesced a wider set of deployments itself. Tags come from job.report (backup_id, trigger)."""
    work = {
        "pg-database": lambda: steps.dump_db(job, db_size),
        "files": lambda: steps.restic_backup(job),
    }
    results: dict = {}
    if job.settings.parallel_backup:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="backup-step") as pool:
            futures = {name: pool.submit(fn) for name, fn in work.items()}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception:
                    pass  # recorded on the job by its step
    else:
        for name, fn in work.items():
            try:
                results[name] = fn()
            except Exception:
                break  # recorded on the job by its step; resume still runs
    return results


def summarize(settings, results: dict) -> dict:
    """The report fields describing the snapshots a backup made."""
    return {
        "snapshots": {name: r["snapshot_id"] for name, r in results.items()},
        "bytes_added": {**{name: r["data_added"] for name, r in results.items()},
                        "total": sum(r["data_added"] for r in results.values())},
        "files": {k: results["files"][k] for k in ("files_new", "files_changed", "files_unmodified",
                                                     "total_files_processed", "total_bytes_processed")}
        if "files" in results else None,
        "database": {"format": settings.pg_dump_format, "dump_bytes": results["pg-database"]["total_bytes_processed"]}
        if "pg-database" in results else None,
    }


def discard(job: Job, snapshots: dict) -> None:
    """A failed backup leaves no snapshot behind: half a backup must never become `latest`."""
    for name, snapshot_id in snapshots.items():
        try:
            repositories.repository(job.settings, name).forget(snapshot_id, timeout=job.settings.discard_timeout)
            job.report.setdefault("discarded_snapshots", {})[name] = snapshot_id
        except ProcessError as exc:
            job.fail("discard", exc)


@app.task(bind=True, name="taiga_backup.backup")
def backup(self, **kwargs):
    """Public task (chat-ops contract): kwargs `trigger` only; returns the JSON report."""
    trigger = validate_kwargs(kwargs)
    return run_job(self, "backup", lambda job: take_backup(job, trigger))
